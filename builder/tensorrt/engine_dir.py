"""The engine's `tensorrt/` folder: the network as ONNX for every target, and the TensorRT plan where it
can be built on this machine (TensorRT-RTX targets), plus the engine.json section that says which.

engine.json "tensorrt": {"onnx": REL_PATH | null, "onnx_sha256", "onnx_data": {external data file: sha256},
"plan": REL_PATH | null, "plan_sha256",
"builder": "tensorrt-rtx" | "tensorrt" | null, "builder_version": str | null, "sm": int | null,
"graph_dtype": ..., "limits": {...}, "profiles": [{name, max_batch_size, max_tokens, max_seq_len, kv_capacity}
per optimization profile, in the plan's order], "ran_on_gpu": bool, "note": why there is or is not a plan}.
`ran_on_gpu` is true only after an executor generated tokens from the plan on a GPU
(`build-engine --validate DIR`); building a plan is not running it.
"""

from __future__ import annotations

import time
from pathlib import Path

from builder.tensorrt import PlanBuildError
from builder.tensorrt.targets import RTX, TENSORRT, builder_for

TENSORRT_DIR = "tensorrt"
ONNX_FILE = "model.onnx"
# float32 activations: the CPU executors check this very graph against the reference runtime (fp32); the
# quantized GEMMs keep their FP8/FP4 weights and Q/DQ whatever this is.
GRAPH_DTYPE = "float32"
# Tokens one call may feed per sequence (the prefill chunk): at most TensorRT-LLM's max_num_tokens default,
# capped by the context and by what the decomposed attention's scores may take (ATTENTION_BYTES, or the fit
# plan's runtime reserve when the build has one).
MAX_TOKENS = 8192
ATTENTION_BYTES = 4 << 30
PREFILL_BATCH_SIZE = 1


def plan_file(sm: int) -> str:
    return f"model.sm{sm}.plan"


def limits_of(max_batch_size: int, max_seq_len: int, network=None, attention_bytes: float | None = None):
    """Limits of the plan's profiles. The prefill chunk t is the largest power of two <= MAX_TOKENS whose
    attention scores and probabilities (fp32, every query head: 2 x 4 x heads x t x (max_seq_len + t) bytes
    per sequence) fit in attention_bytes: no tensor grows with context x chunk beyond that budget."""
    from builder.tensorrt.plan import Limits
    t = min(MAX_TOKENS, max_seq_len)
    if network is not None:
        heads = max(layer.attention.num_q_heads for layer in network.layers)
        budget = attention_bytes or ATTENTION_BYTES
        while t > 16 and 8 * heads * PREFILL_BATCH_SIZE * t * (max_seq_len + t) > budget:
            t //= 2
    return Limits(max_batch_size=max_batch_size, max_tokens=t, max_seq_len=max_seq_len,
                  prefill_batch_size=PREFILL_BATCH_SIZE)


def _say(msg: str) -> None:
    import sys
    print(f"build-engine: {msg}", file=sys.stderr, flush=True)


def write_tensorrt(engine: Path, network, sm: int | None, max_batch_size: int, max_seq_len: int,
                   attention_bytes: float | None = None) -> dict:
    """Export engine/tensorrt/model.onnx from the engine's checkpoint and build the plan if this machine can.
    Returns the engine.json "tensorrt" section. Never raises for a missing or failing TensorRT: the
    section says what happened, and the rest of the engine stands."""
    from dataclasses import asdict

    from builder.tensorrt.plan import profile_limits
    kind = builder_for(sm)
    lim = limits_of(max_batch_size, max_seq_len, network, attention_bytes)
    section = {"onnx": None, "onnx_data": {}, "plan": None, "builder": kind, "builder_version": None, "sm": sm,
               "graph_dtype": GRAPH_DTYPE, "limits": asdict(lim), "profiles": profile_limits(lim),
               "ran_on_gpu": False}
    out = engine / TENSORRT_DIR
    out.mkdir(exist_ok=True)
    try:
        saved = export_graph(engine, network, out / ONNX_FILE, lim.kv_capacity)
    except Exception as e:  # a network or format the exporter does not cover: the engine still stands
        section["note"] = f"no ONNX graph: the exporter failed: {type(e).__name__}: {e}"
        _say(f"      tensorrt: {section['note']}")
        return section
    section["onnx"] = f"{TENSORRT_DIR}/{ONNX_FILE}"
    section["onnx_sha256"] = sha256_of(out / ONNX_FILE)
    section["onnx_data"] = saved.data_files
    if kind is None:
        section["note"] = "no GPU target: the ONNX graph is for the CPU executors (no TensorRT plan)"
        return section
    if kind == TENSORRT:
        section["note"] = (f"TensorRT-RTX cannot target SM {sm}; standard TensorRT builds the plan on an SM {sm} "
                           f"GPU: run `build-engine --validate DIR` there")
        return section
    return _build_here(engine, out, section, sm, lim)


def _build_here(engine: Path, out: Path, section: dict, sm: int, lim) -> dict:
    from builder.tensorrt.plan import build_plan
    try:
        import tensorrt_rtx  # noqa: F401  (is the builder installed?)
    except ImportError:
        section["note"] = ("no plan: tensorrt_rtx is not installed (./tools/bootstrap.sh installs it, or "
                           "pip install '.[tensorrt-rtx]'); the ONNX graph is there")
        _say(f"      tensorrt: {section['note']}")
        return section
    try:
        result = build_plan(out / ONNX_FILE, out / plan_file(sm), RTX, sm, lim)
    except PlanBuildError as e:
        section["note"] = f"no plan: {e}"
        _say(f"      tensorrt: {section['note']}")
        return section
    section.update(plan=f"{TENSORRT_DIR}/{plan_file(sm)}", plan_sha256=sha256_of(result.plan),
                   builder_version=result.builder_version,
                   plan_bytes=result.plan_bytes, plan_seconds=result.seconds,
                   note=(f"built ahead of time by TensorRT-RTX {result.builder_version} for SM {sm} on a machine "
                         f"without a GPU: its kernels compile when a GPU loads it; never run"))
    _say(f"      tensorrt: {section['plan']} ({result.plan_bytes / 2**20:.1f} MiB, {result.seconds:.1f} s)")
    return section


def sha256_of(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_graph(engine: Path, network, path: Path, kv_capacity: int | None = None):
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    t0 = time.perf_counter()
    with load_canonical(engine) as ck:
        saved = export_onnx(network, ck, path, dtype=GRAPH_DTYPE, kv_capacity=kv_capacity)
    _say(f"      tensorrt: {path.name} ({saved.weight_bytes / 2**20:.1f} MiB of weights, "
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
            t.update(plan=f"{TENSORRT_DIR}/{plan_file(sm)}", plan_sha256=sha256_of(result.plan),
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
