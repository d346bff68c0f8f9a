"""The engine's `tensorrt/` folder: the network as ONNX for every target, and the TensorRT plan where it
can be built on this machine (TensorRT-RTX targets), plus the engine.json section that says which.

engine.json "tensorrt": {"onnx": REL_PATH | null, "onnx_sha256", "onnx_data": {external data file: sha256},
"plan": REL_PATH | null, "plan_sha256", "plan_bytes", "plan_seconds" (build time), "plan_layers" and
"plan_gemm_layers" (the parsed network's layers and its matrix multiplies), "weights_stripped" (the plan is
refitted from the ONNX weights at load),
"builder": "tensorrt-rtx" | "tensorrt" | null, "builder_version": str | null, "sm": int | null,
"graph_dtype": the graph's compute dtype (spec.capabilities.graph_dtype(sm)), "island_gemm_dtype": the
dtype of the matmuls inside its fp32 islands (spec.capabilities.island_gemm_dtype(sm)), "limits": {...},
"ran_on_gpu": bool, "graph_only": true (only with --graph-only), "note": why there is or is not a plan}.
`ran_on_gpu` is true only after an executor generated tokens from the plan on a GPU
(`build-engine --validate DIR`); building a plan is not running it.
"""

from __future__ import annotations

import time
from pathlib import Path

from builder.tensorrt import PlanBuildError
from checkpoint.fsutil import sha256_file
from builder.tensorrt.targets import RTX, TENSORRT, builder_for

TENSORRT_DIR = "tensorrt"
ONNX_FILE = "model.onnx"
GRAPH_PATH = f"{TENSORRT_DIR}/{ONNX_FILE}"
# The graph's compute dtype is the target SM's (spec.capabilities.graph_dtype: bf16, fp16 on SM75, fp32 for
# the CPU target); the quantized GEMMs keep their FP8/FP4 weights and Q/DQ whatever it is. The CPU executors
# never run this file: they export the fp32 form of the same emitters (runtime.executors.onnxruntime).
# Tokens one call may feed per sequence (the prefill chunk): TensorRT-LLM's max_num_tokens default, capped
# by the context.
MAX_TOKENS = 8192


def plan_file(sm: int) -> str:
    return f"model.sm{sm}.plan"


def limits_of(max_batch_size: int, max_seq_len: int):
    from builder.tensorrt.plan import Limits
    return Limits(max_batch_size=max_batch_size, max_tokens=min(MAX_TOKENS, max_seq_len), max_seq_len=max_seq_len)


def _say(msg: str) -> None:
    import sys
    print(f"build-engine: {msg}", file=sys.stderr, flush=True)


def write_tensorrt(engine: Path, network, sm: int | None, max_batch_size: int, max_seq_len: int, *,
                   graph_only: bool = False, workspace_bytes: int | None = None) -> dict:
    """Export engine/tensorrt/model.onnx from the engine's checkpoint and, where the target's engine is a
    TensorRT-RTX plan, build it. Returns the engine.json "tensorrt" section.

    A target whose engine is a plan gets one or the build fails: PlanBuildError (TensorRT's reason, or the
    missing builder) unless graph_only, which skips the plan and records that none exists. Messages name
    files relative to the engine (the staging folder they are written in is gone once installed)."""
    from dataclasses import asdict

    from spec.capabilities import graph_dtype, island_gemm_dtype
    kind = builder_for(sm)
    dtype, island_gemm = graph_dtype(sm), island_gemm_dtype(sm)
    lim = limits_of(max_batch_size, max_seq_len)
    section = {"onnx": None, "onnx_data": {}, "plan": None, "builder": kind, "builder_version": None, "sm": sm,
               "graph_dtype": dtype, "island_gemm_dtype": island_gemm, "limits": asdict(lim), "ran_on_gpu": False}
    out = engine / TENSORRT_DIR
    out.mkdir(exist_ok=True)
    try:
        saved = export_graph(engine, network, out / ONNX_FILE, dtype, island_gemm)
    except Exception as e:  # a network or format the exporter does not cover
        section["note"] = f"no ONNX graph: the exporter failed: {type(e).__name__}: {e}"
        if kind == RTX:
            raise PlanBuildError(f"{GRAPH_PATH}: {section['note']}") from e
        _say(f"      tensorrt: {section['note']}")
        return section
    section["onnx"] = GRAPH_PATH
    section["onnx_sha256"] = sha256_file(out / ONNX_FILE)
    section["onnx_data"] = saved.data_files
    if kind is None:
        section["note"] = "no GPU target: the ONNX graph is for the CPU executors (no TensorRT plan)"
        return section
    if kind == TENSORRT:
        section["note"] = (f"TensorRT-RTX cannot target SM {sm}; standard TensorRT builds the plan on an SM {sm} "
                           f"GPU: run `build-engine --validate DIR` there")
        return section
    if graph_only:
        section["graph_only"] = True
        section["note"] = (f"graph-only engine (--graph-only): no plan was built; build-engine without "
                           f"--graph-only builds the SM {sm} plan")
        _say(f"      tensorrt: {section['note']}")
        return section
    return _build_here(out, section, sm, lim, workspace_bytes)


def _build_here(out: Path, section: dict, sm: int, lim, workspace_bytes: int | None) -> dict:
    from builder.tensorrt.plan import build_plan
    try:
        import tensorrt_rtx  # noqa: F401  (is the builder installed?)
    except ImportError:
        raise PlanBuildError("tensorrt_rtx is not installed, so the SM {sm} plan cannot be built (./tools/"
                             "bootstrap.sh installs it, or pip install '.[tensorrt-rtx]')".format(sm=sm)) from None
    result = build_plan(out / ONNX_FILE, out / plan_file(sm), RTX, sm, lim, workspace_bytes=workspace_bytes,
                        shown_as=GRAPH_PATH)
    section.update(plan=f"{TENSORRT_DIR}/{plan_file(sm)}", plan_sha256=sha256_file(result.plan),
                   builder_version=result.builder_version,
                   plan_bytes=result.plan_bytes, plan_seconds=result.seconds, plan_layers=result.layers,
                   plan_gemm_layers=result.gemm_layers, weights_stripped=result.weights_stripped,
                   note=(f"built ahead of time by TensorRT-RTX {result.builder_version} for SM {sm} on a machine "
                         f"without a GPU: its kernels compile when a GPU loads it; never run"))
    _say(f"      tensorrt: {section['plan']} ({result.plan_bytes / 2**20:.1f} MiB, {result.seconds:.1f} s, "
         f"{result.layers} layers, {result.gemm_layers} GEMMs)")
    return section


def export_graph(engine: Path, network, path: Path, dtype: str, island_gemm: str = "float32"):
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    t0 = time.perf_counter()
    with load_canonical(engine) as ck:
        saved = export_onnx(network, ck, path, dtype=dtype, island_gemm=island_gemm)
    _say(f"      tensorrt: {path.name} ({dtype}, {saved.weight_bytes / 2**20:.1f} MiB of weights, "
         f"{time.perf_counter() - t0:.1f} s)")
    return saved


# -- on a GPU box: `build-engine --validate DIR` ------------------------------------------------------------
SMOKE_PROMPT_IDS = (1, 2, 3)
SMOKE_TOKENS = 16


def validate_tensorrt(engine: Path, section: dict | None, present_sms: list[int]) -> dict | None:
    """On a GPU of the engine's SM: build the plan with standard TensorRT where this engine's builder is
    'tensorrt' (SM90/100/103) and none exists yet, then greedy-generate with the TensorRT executor and
    compare with the reference smoke run. Updates `section` (engine.json's "tensorrt"; ran_on_gpu only when
    tokens came out) in place for the caller to write, and returns a validated_on record; None when the
    engine has no TensorRT graph or this machine has no GPU of its SM. Written against the TensorRT Python
    API; never run in this project."""
    t = section or {}
    sm = t.get("sm")
    if not t.get("onnx") or sm is None or sm not in present_sms:
        return None
    record = {"runtime": f"tensorrt plan ({t.get('builder')})", "device": f"SM {sm}", "ok": False}
    try:
        if t.get("plan") is None and t.get("builder") == TENSORRT:
            from builder.tensorrt.plan import UNVALIDATED_GPU_BUILD, Limits, build_plan
            _say(f"tensorrt: building the SM {sm} plan with standard TensorRT ({UNVALIDATED_GPU_BUILD})")
            result = build_plan(engine / t["onnx"], engine / TENSORRT_DIR / plan_file(sm), TENSORRT, sm,
                                Limits(**t["limits"]))
            t.update(plan=f"{TENSORRT_DIR}/{plan_file(sm)}", plan_sha256=sha256_file(result.plan),
                     builder_version=result.builder_version, plan_bytes=result.plan_bytes,
                     note=f"built on this SM {sm} GPU by standard TensorRT {result.builder_version}")
        if t.get("plan") is None:
            record["note"] = f"no plan to run: {t.get('note', 'none was built')}"
        else:
            record.update(_run_plan(engine, t))
            t["ran_on_gpu"] = bool(record["ok"])
    except Exception as e:  # the GPU path has not been validated: report, do not crash the validation
        record["note"] = f"{type(e).__name__}: {e}"
    return record


def _run_plan(engine: Path, t: dict) -> dict:
    from runtime.executors.tensorrt import UNVALIDATED, TensorRTExecutor
    import torch
    from spec.network import NETWORK_FILE, load_network
    module = "tensorrt_rtx" if t["builder"] == RTX else "tensorrt"
    ex = TensorRTExecutor(engine / t["plan"], load_network(engine / NETWORK_FILE), module=module)
    cache = ex.new_cache(1)
    ids = list(SMOKE_PROMPT_IDS)
    pos = list(range(len(ids)))
    out = []
    t0 = time.perf_counter()
    for _ in range(SMOKE_TOKENS):
        logits = ex.forward(torch.tensor([ids]), torch.tensor([pos]), cache)
        out.append(int(logits[0].argmax()))
        ids, pos = [out[-1]], [pos[-1] + 1]
    seconds = time.perf_counter() - t0
    ref = _reference_tokens(engine)
    return {"ok": len(out) == SMOKE_TOKENS, "prompt_ids": list(SMOKE_PROMPT_IDS), "output_ids": out,
            "tokens_per_s": round(SMOKE_TOKENS / seconds, 2), "matches_reference": ref == out if ref else None,
            "note": UNVALIDATED}


def _reference_tokens(engine: Path) -> list[int] | None:
    from runtime import Runtime, SamplingParams
    try:
        rt = Runtime.from_dir(engine)
        [r] = rt.generate([list(SMOKE_PROMPT_IDS)], SamplingParams(max_tokens=SMOKE_TOKENS, temperature=0.0,
                                                                  stop_token_ids=()))
        return list(r.output_ids)
    except MemoryError:
        return None
