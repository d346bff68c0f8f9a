"""`build-engine`: plan -> read/convert -> quantize -> write the engine directory -> validate -> install.

The engine directory is built in a hidden staging folder beside --output and renamed into place at the
end, so a killed build leaves the previous engine intact and no partial one. Each stage prints a line.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

import spec
from builder.engine import EXIT_NO_PLAN, BuildError
from builder.engine.cache import BuildCache, cache_key, source_hashes
from builder.engine.gpu import check_target_matches, detect_gpus
from builder.engine.options import llm_api_options
from builder.engine.sources import resolve_checkpoint
from builder.fit import INCOMPATIBLE, LOW_MEMORY, FitPlan, FitError, plan_for
from checkpoint.errors import CheckpointError
from checkpoint.fsutil import (UnsafeOutputError, cache_dir, check_output_apart, check_replaceable, install_dir,
                               remove_stale_staging, sha256_file, staging_dir)
from spec.manifest import MANIFEST_FILE, EngineManifest, ManifestError, is_engine_dir
from spec.network import NETWORK_FILE, Network, check_config_matches
from spec.registry.models import ModelConfig, get_model
from spec.target import Target, quant_for, resolve_target

# Bump whenever what a build writes changes (new files, new layout): it is part of the cache key, so
# engines cached by an older builder are rebuilt rather than served stale.
# 5: engine.json records the sha256 of every file under triton/ (triton_sha256), checked by serve-engine.
# 6: tensorrt/model.onnx only for TensorRT-RTX plan targets.
# 7: the graph's external data points into the checkpoint's shards (hard-linked into tensorrt/) where the
#    bytes are the same (engine.json "tensorrt"."onnx_weights").
# 8: RTX-class engines with a plan do not keep the graph it was built from (--keep-graph keeps it).
ENGINE_LAYOUT_VERSION = 8
# Free disk needed beyond the checkpoint's own bytes: network.json, tokenizer, manifest, slack.
DISK_SLACK_BYTES = 64 * 2**20


@dataclass
class BuildRequest:
    model: str | ModelConfig
    gpu: str
    checkpoint: str | None = None
    quant: str = "auto"
    tp: int | None = None
    ep: int | None = None
    max_seq_len: int | None = None
    max_batch_size: int | None = None
    output: str | None = None
    cache_policy: str = "on"
    cache_dir: str | None = None
    cross_build: bool = False
    calib_file: str | None = None
    kv_dtype: str | None = None
    progress: bool = True
    # Targets whose engine is a TensorRT plan: skip the plan and install the graph alone (recorded as such).
    graph_only: bool = False
    # ... and keep the graph beside the built plan (by default it is removed: the plan holds the weights).
    keep_graph: bool = False
    plan_workspace_bytes: int | None = None   # the plan builder's workspace limit (None: TensorRT's default)
    cache_max_bytes: int | None = None        # None: $GPTOSS_TRT_CACHE_MAX_GB, else 100 GB


def _say(msg: str) -> None:
    print(f"build-engine: {msg}", file=sys.stderr, flush=True)


def tool_versions() -> dict[str, str]:
    # Read from package metadata: importing torch just to ask costs seconds on a cache hit.
    from importlib.metadata import PackageNotFoundError, version
    versions = {"gptoss-trt": spec.__version__, "python": platform.python_version()}
    for package in ("torch", "numpy", "ml_dtypes", "safetensors", "onnx", "tensorrt_llm", "tensorrt-rtx-cu13"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def _model(model):
    """A registry name, or a ModelConfig read from a checkpoint's config (--checkpoint without --model)."""
    try:
        return model if isinstance(model, ModelConfig) else get_model(model)
    except KeyError as e:
        raise FitError(e.args[0]) from None


def resolve(req: BuildRequest) -> Target:
    """`--gpu`, `--quant` and `--kv-dtype`. For `--quant auto` the build revisits the quant once the source
    checkpoint's format is known (some architectures keep it: AUTO_KEEPS_SOURCE_BY_ARCH)."""
    try:
        return resolve_target(req.gpu, req.quant, req.kv_dtype)
    except KeyError as e:
        raise FitError(e.args[0]) from None


def make_plan(req: BuildRequest, model, target: Target) -> FitPlan:
    batch = req.max_batch_size or 16
    p = plan_for(model, target, tp=req.tp, ep=req.ep, max_seq_len=req.max_seq_len, max_batch_size=batch)
    if p.verdict == LOW_MEMORY and req.max_batch_size is None and p.fits_max_batch_size:
        # The default batch was ours, not the user's: size it to what fits at full context.
        p = plan_for(model, target, tp=p.tp, ep=p.ep, max_seq_len=req.max_seq_len,
                     max_batch_size=p.fits_max_batch_size)
    return p


def _source_quant(src: Path) -> str | None:
    """The source's format from its config files; None where they cannot say (the load reports why later)."""
    from checkpoint.modelopt_config import source_quant
    from checkpoint.errors import CheckpointError
    try:
        return source_quant(src)
    except (CheckpointError, StopIteration):
        return None


def default_output(p: FitPlan) -> Path:
    return Path("engines") / f"{p.model}-{p.gpu}-{p.quant}-tp{p.tp}"


def build(req: BuildRequest) -> Path:
    t0 = time.perf_counter()
    model = _model(req.model)
    target = resolve(req)
    gpu, quant = target.gpu, target.quant
    if not req.cross_build:
        check_target_matches(gpu, detect_gpus())

    _say(f"[1/6] plan: {model.name} on {req.gpu}")
    p = make_plan(req, model, target)
    src = None
    if p.verdict == INCOMPATIBLE and req.checkpoint:
        # `--quant auto` may keep the source's format (the CPU keeps MXFP4: 13 GB, not 42 GB of bf16): judge the
        # plan on what the build would write before calling it incompatible
        src = resolve_checkpoint(model, req.checkpoint)
        kept = quant_for(gpu, req.quant, _source_quant(src))
        if kept != target.quant:
            p = make_plan(req, model, dataclasses.replace(target, quant=kept))
    if p.verdict == INCOMPATIBLE:
        raise BuildError("the plan is incompatible: " + "; ".join(p.reasons), exit_code=3)
    for reason in p.reasons:
        _say(f"      {reason}")

    _say("[2/6] source checkpoint")
    src = src or resolve_checkpoint(model, req.checkpoint)
    kept = quant_for(gpu, req.quant, _source_quant(src))     # the GPU was looked up once, above
    if kept != target.quant:                             # `auto` keeps the source's format on this target
        target, quant = dataclasses.replace(target, quant=kept), kept
        p = make_plan(req, model, target)
        _say(f"      --quant auto keeps the source's {quant.name} on {gpu.name}")
    cache = BuildCache(Path(req.cache_dir) if req.cache_dir else cache_dir(), req.cache_policy,
                       max_bytes=req.cache_max_bytes)
    out = Path(req.output) if req.output else default_output(p)
    check_output_safe(out, src, req.calib_file, cache.root)
    inputs = {
        "sources": source_hashes(src, cache.root),
        "model": model.name, "gpu_sm": gpu.sm, "gpu": gpu.name, "quant": quant.name, "tp": p.tp, "ep": p.ep,
        "max_seq_len": p.max_seq_len, "max_batch_size": p.max_batch_size, "kv_cache_dtype": target.kv_cache_dtype,
        "calib_file": source_hashes_of_file(req.calib_file), "tools": tool_versions(),
        "engine_layout": ENGINE_LAYOUT_VERSION, "graph_only": req.graph_only,
        "keep_graph": req.keep_graph, "plan_workspace_bytes": req.plan_workspace_bytes,
    }
    key = cache_key(inputs)
    _say(f"      {src} ({len(inputs['sources'])} files), cache key {key[:16]}")
    for stale in remove_stale_staging(out):
        _say(f"      removed {stale.name}, left by an interrupted build")

    hit = cache.lookup(key)
    if hit is not None:
        if _cache_key_of(out) != key:
            tmp = staging_dir(out)
            try:
                cache.install_from(key, tmp)       # hard links: the engine's bytes stay on disk once
                from builder.engine.validate import repoint_notes
                repoint_notes(tmp, out)            # engine.json is rewritten by rename: the cache's stays
                check_engine_values(tmp)           # the cache is a folder on disk like any other: read it as input
                install_dir(tmp, out, _engine_replaceable)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        _say(f"cache hit: {out} ({time.perf_counter() - t0:.2f} s)")
        return out

    # After the cache lookup: a hit was checked when it was built, and this imports torch (seconds).
    check_checkpoint_is(model, src)
    tokenizer = check_tokenizer(model, src)              # after the architecture: a wrong --model says so first
    check_disk(out, model, quant)
    tmp = staging_dir(out)
    try:
        _say(f"[3/6] convert and quantize to {quant.checkpoint}")
        engine = tmp / "engine"
        write_checkpoint(src, engine, target, req)
        _say("[4/6] network.json, options, tokenizer")
        network = write_network(engine, quant.name)
        if target.is_gpu:
            write_llm_api_options(engine, llm_api_options(p, target, network))
        trt = write_tensorrt_dir(engine, network, target, p, req)
        _say("[5/6] validate")
        validated = validate_after_build(engine, target, installed_at=out)
        _say("[6/6] manifest, Triton model repository, install")
        EngineManifest(
            cache_key=key, model=model.name, gpu=gpu.name, sm=gpu.sm, quant=quant.name,
            trtllm_quant_algo=quant.trtllm_quant_algo, target=target.to_dict(),
            tp=p.tp, ep=p.ep, max_seq_len=p.max_seq_len, max_batch_size=p.max_batch_size,
            inputs={"checkpoint": str(src.resolve()), "sha256": inputs["sources"], "calib_file": req.calib_file},
            tools=inputs["tools"], plan=p.to_dict(), network_kernels=list(network.kernels),
            stop_token_ids=list(network.eos_token_ids),
            build_seconds=round(time.perf_counter() - t0, 3), validated_on=validated, tensorrt=trt,
            tokenizer=tokenizer,
        ).write(engine)
        write_triton_repo(engine)
        check_engine_values(engine)
        install_dir(engine, out, _engine_replaceable)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cache.store(key, out)
    summarize(out)
    return out


def check_engine_values(engine: Path) -> None:
    """The engine about to be installed passes the reader every tool uses (spec.engine_values): what the build
    wrote is what run-engine, serve-engine and deploy-engine accept."""
    from spec.engine_values import ENGINE_ERRORS, read_engine
    try:
        read_engine(engine, need_network=True)
    except ENGINE_ERRORS as e:
        raise BuildError(f"the engine this build wrote fails its own checks: {e}") from None


def check_tokenizer(model, src: Path) -> str | None:
    """The tokenizer the engine will serve text with (model_repo.tokenizer.choose_tokenizer's rule), decided at
    stage 2; a checkpoint without one builds an engine of token ids (engine.json tokenizer: NO_TOKENIZER), said in
    one line. Returns engine.json's `tokenizer` (None: chosen again when served, as before)."""
    from model_repo.tokenizer import NO_TOKENIZER, checkpoint_tokenizer
    if checkpoint_tokenizer(src, model.name) != NO_TOKENIZER:
        return None
    _say(f"      no tokenizer.json in {src}: the engine runs with token ids (run-engine --input-ids) and its Triton "
         f"repository serves them through tensorrt_llm alone (no text models)")
    return NO_TOKENIZER


def check_checkpoint_is(model, src: Path) -> None:
    """The checkpoint holds the architecture --model names (else the plan and the engine would disagree)."""
    from checkpoint.config_io import architecture_diff, model_config_from_checkpoint
    from checkpoint.errors import CheckpointError
    try:
        diff = architecture_diff(model_config_from_checkpoint(src), model)
    except CheckpointError as e:
        raise BuildError(str(e)) from None
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r}, {model.name} {b!r}" for k, (a, b) in list(diff.items())[:8])
        raise BuildError(f"{src / 'config.json'} is not the {model.name} architecture ({shown}); fix: pass the "
                         f"--model whose registry entry matches the checkpoint, or add one for it "
                         f"(spec/registry/models.py)")


def _engine_replaceable(out: Path) -> None:
    try:
        check_replaceable(out, is_engine_dir, "--output", f"an engine directory (no {MANIFEST_FILE})")
    except UnsafeOutputError as e:
        raise BuildError(str(e)) from None


def check_output_safe(out: Path, src: Path, calib_file: str | None, cache_root: Path) -> None:
    """--output must stay apart from every input and the cache, and may replace only an engine or an empty folder."""
    try:
        check_output_apart(out, {"--checkpoint": src, "--calib-file": calib_file, "the build cache": cache_root},
                           "--output")
    except UnsafeOutputError as e:
        raise BuildError(str(e)) from None
    _engine_replaceable(out)


def write_triton_repo(engine: Path) -> None:
    """The Triton model repository that serves this engine, as engine/triton (it reads engine.json)."""
    from model_repo.write import write_model_repo
    write_model_repo(engine)


def source_hashes_of_file(path: str | None) -> str | None:
    if not path:
        return None
    return sha256_file(path)


def check_disk(out: Path, model, quant) -> None:
    from spec.params import weight_bytes
    need = sum(weight_bytes(model, quant).values()) + DISK_SLACK_BYTES
    where = out.parent if out.parent.exists() else Path.cwd()
    free = shutil.disk_usage(where).free
    if free < need:
        raise BuildError(f"{where}: {free / 2**30:.2f} GiB free, the {model.name} {quant.name} engine needs "
                         f"{need / 2**30:.2f} GiB; free space or pass --output on a larger disk")


def _cache_key_of(engine: Path) -> str | None:
    try:
        return EngineManifest.read(engine).cache_key
    except ManifestError:
        return None


def write_llm_api_options(engine: Path, options: dict) -> None:
    (engine / "llm_api_options.yaml").write_text(
        "# TensorRT-LLM LLM-API options for this engine (trtllm-serve --extra_llm_api_options)\n"
        + yaml.safe_dump(options, sort_keys=False))


def write_checkpoint(src: Path, dst: Path, target: Target, req: BuildRequest) -> None:
    from builder.convert import calibrate_and_convert
    from checkpoint.quant_policy import ACTIVATION_SCALE
    fmt = target.quant
    # W4A4 NVFP4 / W8A8 FP8 need calibrated activation scales: --calib-file, else the built-in texts. Where
    # the target serves an FP8 KV cache (Blackwell), those checkpoints carry calibrated K/V scales too.
    calibration = (req.calib_file or "default") if fmt.activations in ACTIVATION_SCALE else None
    kv_fp8 = calibration is not None and target.kv_cache_dtype == "fp8"
    try:
        calibrate_and_convert(src, dst, to=fmt.checkpoint, progress=req.progress, calibration=calibration,
                           kv_cache="fp8" if kv_fp8 else None)
    except CheckpointError as e:
        raise BuildError(str(e)) from None


def write_network(engine: Path, quant: str) -> Network:
    """network.json for the converted checkpoint in `engine`, checked against the config.json beside it."""
    from checkpoint.convert import load_canonical
    from spec.network import NetworkError, network_from_checkpoint
    try:
        with load_canonical(engine) as ck:
            network = network_from_checkpoint(ck, quant=quant)
            check_config_matches(network, ck.config, where=str(engine))
    except NetworkError as e:
        # the checkpoint's config.json says something no network may (an end token outside the vocabulary, ...)
        raise BuildError(f"the checkpoint's config.json (as converted into {engine.name}/): {e}; fix the "
                         f"checkpoint's config.json") from None
    network.save(engine / NETWORK_FILE)
    return network


def write_tensorrt_dir(engine: Path, network: Network, target: Target, p: FitPlan, req: BuildRequest) -> dict:
    """engine/tensorrt/: the ONNX graph and the TensorRT plan where the target's engine is one; returns
    engine.json's "tensorrt" section. A plan that cannot be built fails the build (exit 4, nothing installed)
    unless --graph-only asked for the graph alone."""
    from builder.tensorrt import PlanBuildError
    from builder.tensorrt.engine_dir import write_tensorrt
    try:
        return write_tensorrt(engine, network, target.sm, p.max_batch_size, p.max_seq_len,
                              graph_only=req.graph_only, keep_graph=req.keep_graph, workspace_bytes=req.plan_workspace_bytes,
                              attention_bytes=p.runtime_reserve_bytes or None,
                              kv_budget_bytes=p.kv_budget_bytes_per_gpu or None)
    except PlanBuildError as e:
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise BuildError(f"no TensorRT plan for {target.name} (SM {target.sm}), so nothing was installed: {reason}; "
                         f"fix: address the reason, or pass --graph-only for an engine with the ONNX graph "
                         f"and no plan", exit_code=EXIT_NO_PLAN) from None


def validate_after_build(engine: Path, target: Target, installed_at: Path) -> list[dict]:
    from builder.engine.validate import smoke_reference, validate_on_gpu_if_possible
    records = [smoke_reference(engine, emulating=target.name)]
    records += validate_on_gpu_if_possible(engine, target, installed_at=installed_at)
    return records


def summarize(out: Path) -> None:
    m = EngineManifest.read(out)
    lines = [f"engine: {out}", f"  {m.model} for {m.gpu} (SM {m.sm}), {m.quant}, tp={m.tp} ep={m.ep}, "
             f"max_seq_len={m.max_seq_len}, max_batch_size={m.max_batch_size}, built in {m.build_seconds} s"]
    for v in m.validated_on:
        lines.append(f"  {v['runtime']} on {v['device']}: {'ok' if v['ok'] else 'NOT VALIDATED'}"
                     + (f", {v['tokens_per_s']:.1f} tok/s" if v.get("tokens_per_s") else "")
                     + (f" - {v['note']}" if v.get("note") else ""))
    print("\n".join(lines))


def dump_manifest(out: Path) -> str:
    return json.dumps(EngineManifest.read(out).to_dict(), indent=2)
