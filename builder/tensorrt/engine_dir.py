"""The engine's `tensorrt/` folder: for targets whose engine is a TensorRT-RTX plan (RTX-class SMs), the
network as ONNX and the plan built from it, plus the engine.json section that says which. Other targets store
no graph (the section says why): the CPU executors export their own graph when they load the engine
(runtime.executors.onnxruntime), and datacentre GPUs serve through TensorRT-LLM from the checkpoint;
`build-engine --validate DIR` on such a GPU exports the graph there before building a standard TensorRT plan.

engine.json "tensorrt": {"onnx": REL_PATH | null, "onnx_sha256", "onnx_data": {the graph's own external data
file: sha256}, "onnx_weights": {"shared_bytes", "written_bytes", "shared_initializers", "written_initializers",
"linked_shards"} (initializers whose bytes equal a checkpoint tensor point into its shard, hard-linked into
tensorrt/: plugins/onnx/shared_weights.py; the rest are in the graph's own data file),
"plan": REL_PATH | null, "plan_sha256", "plan_bytes", "plan_seconds" (build time), "plan_layers" and
"plan_gemm_layers" (the parsed network's layers and its matrix multiplies), "weights_stripped" (the plan is
refitted from the ONNX weights at load),
"graph_kept": false once a plan is built without --keep-graph (the plan holds the weights; the graph it was
built from is removed and "built_from" keeps its onnx_sha256 and onnx_weights record),
"builder": "tensorrt-rtx" | "tensorrt" | null, "builder_version": str | null, "sm": int | null,
"graph_dtype": the graph's compute dtype (spec.capabilities.graph_dtype(sm)), "island_gemm_dtype": the
dtype of the matmuls inside its fp32 islands (spec.capabilities.island_gemm_dtype(sm)), "limits": {...},
"profiles": [{name, max_batch_size, max_tokens, max_seq_len, kv_capacity} per optimization profile, in the
plan's order], "ran_on_gpu": bool, "graph_only": true (only with --graph-only), "note": why there is or is not a plan}.
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
# Tokens one call may feed per sequence (the prefill chunk): at most TensorRT-LLM's max_num_tokens default,
# capped by the context and by what the decomposed attention's scores may take (ATTENTION_BYTES, or the fit
# plan's runtime reserve when the build has one).
MAX_TOKENS = 8192
ATTENTION_BYTES = 4 << 30
PREFILL_BATCH_SIZE = 1
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def plan_file(sm: int) -> str:
    return f"model.sm{sm}.plan"


def graph_kv_bytes_per_sequence(network, max_seq_len: int, max_tokens: int, dtype_bytes: int) -> int:
    """Bytes of one sequence's past_* inputs in the graph (plugins/onnx/kv_cache.py): K and V of every layer,
    full layers max_seq_len + max_tokens rows, sliding layers their ring, in the graph's compute dtype (the
    TensorRT graph's cache is that dtype, not the fit plan's serving KV dtype)."""
    from plugins.onnx.kv_cache import ring_rows
    total = 0
    for layer in network.layers:
        a = layer.attention
        rows = max_seq_len + max_tokens if a.cache_kind.full else ring_rows(a.cache_kind)
        total += 2 * a.num_kv_heads * rows * a.head_dim * dtype_bytes
    return total


def limits_of(max_batch_size: int, max_seq_len: int, network=None, attention_bytes: float | None = None,
              kv_budget_bytes: float | None = None, dtype_bytes: int = 2):
    """Limits of the plan's profiles. The prefill chunk t is the largest power of two <= MAX_TOKENS whose
    attention scores and probabilities (fp32, every query head: 2 x 4 x heads x t x (max_seq_len + t) bytes
    per sequence) fit in attention_bytes: no tensor grows with context x chunk beyond that budget.
    kv_budget_bytes (the fit plan's KV budget per GPU): the decode batch is capped so that many sequences'
    graph caches at full capacity fit in it (graph_kv_bytes_per_sequence; the fit plan counts its serving KV
    dtype, fp8 on Blackwell, where the graph holds dtype_bytes per value)."""
    from builder.tensorrt.plan import Limits
    t = min(MAX_TOKENS, max_seq_len)
    batch = max_batch_size
    if network is not None:
        heads = max(layer.attention.num_q_heads for layer in network.layers)
        budget = attention_bytes or ATTENTION_BYTES
        while t > 16 and 8 * heads * PREFILL_BATCH_SIZE * t * (max_seq_len + t) > budget:
            t //= 2
        if kv_budget_bytes:
            per_seq = graph_kv_bytes_per_sequence(network, max_seq_len, t, dtype_bytes)
            batch = max(1, min(max_batch_size, int(kv_budget_bytes // per_seq)))
    return Limits(max_batch_size=batch, max_tokens=t, max_seq_len=max_seq_len,
                  prefill_batch_size=PREFILL_BATCH_SIZE)


def _say(msg: str) -> None:
    import sys
    print(f"build-engine: {msg}", file=sys.stderr, flush=True)


def no_graph_note(kind: str | None, sm: int | None) -> str:
    """Why a target's engine stores no ONNX graph (engine.json "tensorrt" note), one line."""
    if kind == TENSORRT:
        return (f"no ONNX graph stored: TensorRT-LLM serves SM {sm} from the checkpoint; `build-engine --validate "
                f"DIR` on an SM {sm} GPU exports the graph there and builds a standard TensorRT plan from it")
    return ("no ONNX graph stored: the CPU executors export their own graph from the checkpoint when they load "
            "the engine (no TensorRT plan)")


def write_tensorrt(engine: Path, network, sm: int | None, max_batch_size: int, max_seq_len: int, *,
                   graph_only: bool = False, keep_graph: bool = False, workspace_bytes: int | None = None,
                   attention_bytes: float | None = None, kv_budget_bytes: float | None = None) -> dict:
    """Where the target's engine is a TensorRT-RTX plan: export engine/tensorrt/model.onnx from the engine's
    checkpoint and build the plan. Other targets get no graph (their section's note says why). Returns the
    engine.json "tensorrt" section.

    A target whose engine is a plan gets one or the build fails: PlanBuildError (TensorRT's reason, or the
    missing builder) unless graph_only, which skips the plan and records that none exists. Once the plan is
    built the graph is removed unless keep_graph (drop_graph: the plan is what runs, and the graph's own data
    is most of the checkpoint's bytes again). Messages name files relative to the engine (the staging folder
    they are written in is gone once installed)."""
    from dataclasses import asdict

    from builder.tensorrt.plan import profile_limits
    from spec.capabilities import graph_dtype, island_gemm_dtype
    kind = builder_for(sm)
    dtype, island_gemm = graph_dtype(sm), island_gemm_dtype(sm)
    lim = limits_of(max_batch_size, max_seq_len, network, attention_bytes, kv_budget_bytes,
                    DTYPE_BYTES.get(dtype, 4))
    if lim.max_batch_size < max_batch_size:
        _say(f"      tensorrt: decode profile batch {lim.max_batch_size}, not {max_batch_size}: the graph's {dtype} "
             f"caches at {max_seq_len + lim.max_tokens} rows fit {lim.max_batch_size} sequences in the plan's "
             f"{kv_budget_bytes / 1e9:.1f} GB KV budget")
    section = {"onnx": None, "onnx_data": {}, "plan": None, "builder": kind, "builder_version": None, "sm": sm,
               "graph_dtype": dtype, "island_gemm_dtype": island_gemm, "limits": asdict(lim),
               "profiles": profile_limits(lim), "ran_on_gpu": False}
    if kind != RTX:
        section["note"] = no_graph_note(kind, sm)
        return section
    out = engine / TENSORRT_DIR
    out.mkdir(exist_ok=True)
    try:
        saved = export_graph(engine, network, out / ONNX_FILE, dtype, island_gemm, lim.kv_capacity)
    except Exception as e:  # a network or format the exporter does not cover
        raise PlanBuildError(f"{GRAPH_PATH}: no ONNX graph: the exporter failed: {type(e).__name__}: {e}") from e
    section.update(graph_record(out, saved))
    if graph_only:
        section["graph_only"] = True
        section["note"] = (f"graph-only engine (--graph-only): no plan was built; build-engine without "
                           f"--graph-only builds the SM {sm} plan")
        _say(f"      tensorrt: {section['note']}")
        return section
    section = _build_here(out, section, sm, lim, workspace_bytes)
    return section if keep_graph else drop_graph(out, section)


def drop_graph(out: Path, section: dict) -> dict:
    """Remove the graph a plan was built from: model.onnx, its own data and its links to the checkpoint's
    shards (the shards themselves stay: they are the engine's checkpoint). The plan is self-contained (not
    weight-stripped), so an engine needs only its checkpoint and its plan; kept, the graph writes again every
    weight whose layout differs from the checkpoint's (the experts: the GEMMs take [out, in], the checkpoint
    stores [in/2, out] FP4), 1.7x the checkpoint on the tiny model. `build-engine --validate` exports the graph
    again where one is needed (export_graph_on_demand)."""
    if section.get("weights_stripped"):
        return section                     # a stripped plan is refitted from the graph's weights at load
    links = (section.get("onnx_weights") or {}).get("linked_shards", [])
    for name in [ONNX_FILE, *section.get("onnx_data", {}), *links]:
        (out / name).unlink(missing_ok=True)
    built_from = {k: section.pop(k) for k in ("onnx_sha256", "onnx_weights") if k in section}
    section.update(onnx=None, onnx_data={}, graph_kept=False, built_from=built_from,
                   note=f"{section['note']}; the graph it was built from is not kept (--keep-graph keeps "
                        f"{GRAPH_PATH})")
    return section


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


def graph_record(out: Path, saved) -> dict:
    """engine.json's fields for the graph just written in `out` (the engine's tensorrt/ folder)."""
    return {"onnx": GRAPH_PATH, "onnx_sha256": sha256_file(out / ONNX_FILE), "onnx_data": saved.data_files,
            "onnx_weights": {"shared_bytes": saved.shared_bytes, "written_bytes": saved.written_bytes,
                             "shared_initializers": len(saved.shared),
                             "written_initializers": saved.initializers - len(saved.shared),
                             "linked_shards": saved.linked}}


def export_graph(engine: Path, network, path: Path, dtype: str, island_gemm: str = "float32",
                 kv_capacity: int | None = None):
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from plugins.onnx.shared_weights import CheckpointBytes
    t0 = time.perf_counter()
    with load_canonical(engine) as ck, CheckpointBytes(engine) as share:
        saved = export_onnx(network, ck, path, dtype=dtype, island_gemm=island_gemm, kv_capacity=kv_capacity,
                            share=share)
    _say(f"      tensorrt: {path.name} ({dtype}, {saved.weight_bytes / 2**20:.1f} MiB of weights: "
         f"{saved.shared_bytes / 2**20:.1f} MiB in the checkpoint's shards, {saved.written_bytes / 2**20:.1f} MiB "
         f"written; {time.perf_counter() - t0:.1f} s)")
    return saved


# -- on a GPU box: `build-engine --validate DIR` ------------------------------------------------------------
SMOKE_PROMPT_IDS = (1, 2, 3)
SMOKE_TOKENS = 16


def validate_tensorrt(engine: Path, section: dict | None, present_sms: list[int]) -> dict | None:
    """On a GPU of the engine's SM: build the plan with standard TensorRT where this engine's builder is
    'tensorrt' (SM90/100/103) and none exists yet, then greedy-generate with the TensorRT executor and
    compare with the reference smoke run. Updates `section` (engine.json's "tensorrt"; ran_on_gpu only when
    tokens came out) in place for the caller to write, and returns a validated_on record; None when the
    engine has no TensorRT target or this machine has no GPU of its SM. The graph of a 'tensorrt' engine is
    exported here first (builds store none: write_tensorrt). Written against the TensorRT Python API; never
    run in this project."""
    t = section or {}
    sm = t.get("sm")
    if t.get("builder") not in (RTX, TENSORRT) or sm is None or sm not in present_sms:
        return None
    record = {"runtime": f"tensorrt plan ({t.get('builder')})", "device": f"SM {sm}", "ok": False}
    try:
        if t.get("plan") is None and t.get("builder") == TENSORRT:
            from builder.tensorrt.plan import UNVALIDATED_GPU_BUILD, Limits, build_plan
            if not t.get("onnx"):
                export_graph_on_demand(engine, t)
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


def export_graph_on_demand(engine: Path, t: dict) -> None:
    """The graph of an engine built without one (a 'tensorrt' target), in the section's dtype and limits,
    written into engine/tensorrt/ and recorded in the section `t`."""
    from builder.tensorrt.plan import Limits
    from spec.network import NETWORK_FILE, load_network
    out = engine / TENSORRT_DIR
    out.mkdir(exist_ok=True)
    saved = export_graph(engine, load_network(engine / NETWORK_FILE), out / ONNX_FILE, t["graph_dtype"],
                         t.get("island_gemm_dtype", "float32"), Limits(**t["limits"]).kv_capacity)
    t.update(graph_record(out, saved))


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
