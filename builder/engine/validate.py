"""Running a built engine: the reference runtime everywhere, TensorRT-LLM where it imports and a matching
GPU is present. Every result is a record for engine.json's `validated_on`, including what did NOT run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from builder.engine import BuildError
from plugins.onnx.memory import ORT_LARGE_MODEL_FRACTION
from runtime.devices import detect_gpus
from spec.manifest import EngineManifest, ManifestError
from spec.target import Target, target_of_manifest

SMOKE_PROMPT = "The"
SMOKE_TOKENS = 16
# The reference runtime holds fp32 weights; refuse to smoke-run what would not fit in memory.
REFERENCE_MEMORY_FRACTION = 0.6
# Where it does not fit, ONNX Runtime's packed CPU lowering (FP4 experts as stored, bf16 weights as bf16; most
# of it memory-mapped from the exported graph's data, pages the kernel can drop) runs the engine when its
# weights fit in this much of the memory: the full gpt-oss-20b MXFP4 CPU engine holds ~14.4 GB, 11.9 GB peak RSS.
ORT_MEMORY_FRACTION = ORT_LARGE_MODEL_FRACTION
ORT_SMOKE_TOKENS = 8          # a decode step of the 20b takes seconds on 2 cores


def _validate_command(engine: Path) -> str:
    return f"build-engine --validate {engine}"


def repoint_notes(engine: Path, installed_at: Path) -> None:
    """A cached engine copied to a new place: its instructions name the new place, not the first build's."""
    import re
    m = EngineManifest.read(engine)
    for r in m.validated_on:
        if isinstance(r.get("note"), str):
            r["note"] = re.sub(r"`build-engine --validate [^`]*`", lambda _: f"`{_validate_command(installed_at)}`",
                               r["note"])
    m.write(engine)


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def smoke_reference(engine: Path, emulating: str) -> dict:
    """Greedy-generate a few tokens with the reference runtime, which emulates the engine's numerics."""
    from checkpoint.convert import load_canonical
    from spec.params import total_params
    with load_canonical(engine) as ck:
        need = total_params(ck.config) * 4
    record = {"runtime": "reference", "device": "cpu", "emulates": emulating}
    tokens = SMOKE_TOKENS
    if need > _ram_bytes() * REFERENCE_MEMORY_FRACTION:
        skipped = f"fp32 reference weights need {need / 1e9:.0f} GB, this machine has {_ram_bytes() / 1e9:.0f} GB"
        from runtime.executors.onnxruntime import load_onnxruntime, session_weight_bytes
        held = session_weight_bytes(engine)
        if held is None or held[1] > _ram_bytes() * ORT_MEMORY_FRACTION:
            why = "its quant formats" if held is None else f"~{held[1] / 1e9:.1f} GB of weights ({held[0]})"
            return {**record, "ok": False, "note": f"skipped: {skipped}, and ONNX Runtime cannot take it ({why})"}
        t_load = time.perf_counter()
        rt = load_onnxruntime(engine)
        record.update(runtime="onnxruntime", lowering=held[0], load_s=round(time.perf_counter() - t_load, 1),
                      note=f"{skipped}: ran on ONNX Runtime's {held[0]} lowering instead (the same numerics for "
                           f"this engine's formats, runtime/executors/onnxruntime.py)")
        tokens = ORT_SMOKE_TOKENS
    else:
        from runtime import Runtime
        rt = Runtime.from_dir(engine)
    from runtime import SamplingParams
    try:
        prompt = rt.encode(SMOKE_PROMPT) if rt.tokenizer is not None else [1, 2, 3]
        t0 = time.perf_counter()
        [res] = rt.generate([prompt], SamplingParams(max_tokens=tokens, temperature=0.0, stop_token_ids=()))
        seconds = time.perf_counter() - t0
    finally:
        close = getattr(rt.model, "close", None)
        if close is not None:
            close()                   # ONNX Runtime's temporary graph export (GBs at this size)
    record.update(ok=len(res.output_ids) == tokens, prompt_ids=list(prompt), output_ids=list(res.output_ids),
                  tokens_per_s=round(len(res.output_ids) / seconds, 2))
    if rt.tokenizer is not None:
        record["text"] = rt.decode(res.output_ids)
    return record


def validate_on_gpu_if_possible(engine: Path, target: Target, installed_at: Path | None = None) -> list[dict]:
    """installed_at: where the engine will live once installed (the path to name in instructions)."""
    where, gpu = installed_at or engine, target.gpu
    if not target.is_gpu:
        return []
    try:
        import tensorrt_llm  # noqa: F401  (GPU boxes only)
    except ImportError:
        return [{"runtime": "tensorrt_llm", "device": gpu.name, "ok": False,
                 "note": f"not validated on the target: tensorrt_llm is not installed here; on a {gpu.name} box "
                         f"run `{_validate_command(where)}`"}]
    if not any(g.sm == gpu.sm for g in detect_gpus()):
        return [{"runtime": "tensorrt_llm", "device": gpu.name, "ok": False,
                 "note": f"not validated on the target: no SM {gpu.sm} GPU here; run `{_validate_command(where)}` "
                         f"on a {gpu.name} box"}]
    return [run_trtllm(engine)]


def run_trtllm(engine: Path) -> dict:
    """Load the engine with TensorRT-LLM's LLM API (PyTorch backend), warm up, generate, time it.
    Written against upstream's LLM API; it has never run on this project's CPU machines."""
    from model_repo.trtllm import llm_kwargs
    kwargs = llm_kwargs(engine)          # refuses an engine whose network.json and config.json disagree
    import tensorrt_llm
    from tensorrt_llm import LLM, SamplingParams
    llm = LLM(**kwargs)
    params = SamplingParams(max_tokens=SMOKE_TOKENS, temperature=0.0)
    llm.generate([SMOKE_PROMPT], params)                       # warm-up: CUDA graphs, autotuning
    t0 = time.perf_counter()
    [out] = llm.generate([SMOKE_PROMPT], params)
    seconds = time.perf_counter() - t0
    ids = list(out.outputs[0].token_ids)
    return {"runtime": f"tensorrt_llm {tensorrt_llm.__version__}", "device": detect_gpus()[0].name, "ok": bool(ids),
            "output_ids": ids, "text": out.outputs[0].text, "tokens_per_s": round(len(ids) / seconds, 2)}


def validate_command(engine_dir: str) -> dict:
    """`build-engine --validate DIR`: run the engine on this machine's GPU and record it in engine.json."""
    engine = Path(engine_dir)
    try:
        m = EngineManifest.read(engine)
    except ManifestError as e:
        raise BuildError(str(e)) from None
    target = target_of_manifest(m)
    from builder.tensorrt.engine_dir import validate_tensorrt
    trt_record = validate_tensorrt(engine, m.tensorrt, [g.sm for g in detect_gpus()])
    if trt_record is not None:     # the section was updated in place (plan built here, ran_on_gpu)
        m.add_validation(engine, trt_record)
    [record] = validate_on_gpu_if_possible(engine, target) or [smoke_reference(engine, emulating=target.name)]
    m.add_validation(engine, record)
    if not record["ok"]:
        raise BuildError(f"{engine}: {record.get('note', 'validation failed')}", exit_code=1)
    return record
