"""Build a serialized TensorRT plan from an ONNX file.

Both builders take the same path: OnnxParser (its errors listed by node index, name and op), an
optimization profile per kind of call (decode, prefill chunk; `PROFILES`, `profile_shapes`, `profile_limits`), a
strongly typed network (the graph's Q/DQ and casts fix every precision), no timing cache (TensorRT-RTX
would query a GPU for it). The plan is streamed to disk as the builder serializes it (IStreamWriter), so it
is never held in memory twice (builder buffer + a Python bytes copy). `strip_weights=True` builds a
weight-stripped plan (BuilderFlag.STRIP_PLAN, refit mode REFIT_IDENTICAL): the plan holds kernels and
shapes only, and is refitted at load from the engine's own ONNX weights (Refitter + OnnxParserRefitter
.refit_from_file), so plan bytes do not repeat the weights. TensorRT-RTX 1.7.1 cannot build one without a GPU:
any refittable build (REFIT, REFIT_IDENTICAL, STRIP_PLAN with refittable weights) fails in its Myelin JIT
with "CHECK(status == CUDA_SUCCESS) failed" (tried here); build-engine therefore builds full plans. TensorRT-RTX targets one compute capability, ahead of time: its kernels are
compiled on the GPU when the plan is loaded, so a plan built here proves the graph parses, type-checks
and lowers, not that it runs. Standard TensorRT builds for the GPU it runs on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from builder.tensorrt import PlanBuildError
from builder.tensorrt.file_pages import released_file_pages
from builder.tensorrt.targets import RTX, RTX_COMPUTE_CAPABILITY, TENSORRT


@dataclass(frozen=True)
class Limits:
    max_batch_size: int
    max_tokens: int        # tokens one call may feed per sequence (prefill chunk; the cache's headroom)
    max_seq_len: int       # positions a sequence may reach
    prefill_batch_size: int = 1   # sequences one prefill call may carry

    @property
    def kv_capacity(self) -> int:
        """Rows of the full-attention caches (plugins/onnx/kv_cache.py): the context plus one chunk of headroom."""
        return self.max_seq_len + self.max_tokens


# Two optimization profiles, one per kind of call (plugins.onnx.export: batch, seq = new tokens per call; the
# caches have fixed capacities): decode, one token for up to max_batch_size sequences; prefill, a chunk of up
# to max_tokens for up to prefill_batch_size sequences. Symbolic dimension name -> (min, opt, max); an unknown
# name is an error, never a guess. Profile index = position here (decode 0, prefill 1).
PROFILES = {
    "decode": {"batch": lambda lim: (1, 1, lim.max_batch_size), "seq": lambda lim: (1, 1, 1)},
    "prefill": {"batch": lambda lim: (1, 1, lim.prefill_batch_size),
                "seq": lambda lim: (1, lim.max_tokens, lim.max_tokens)},
}


def profile_shapes(model, limits: Limits, profile: str = "decode") -> dict[str, tuple[tuple[int, ...], ...]]:
    """Graph inputs -> (min, opt, max) shapes in one profile: every input with a symbolic dim (each profile
    must give each dynamic input, fixed range or not), symbolic dims looked up in PROFILES[profile]."""
    ranges_of = PROFILES[profile]
    shapes = {}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        ranges, dynamic = [], False
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                ranges.append((d.dim_value,) * 3)
            elif d.dim_param in ranges_of:
                ranges.append(ranges_of[d.dim_param](limits))
                dynamic = True
            else:
                raise PlanBuildError(f"graph input {inp.name!r} axis {i} is {d.dim_param or 'unnamed'!r}: no "
                                     f"profile range for it; name dynamic axes one of {', '.join(ranges_of)}")
        if dynamic:
            shapes[inp.name] = tuple(tuple(r[k] for r in ranges) for k in range(3))
    return shapes


def profile_limits(limits: Limits) -> list[dict]:
    """What each profile of a plan admits, in profile order (engine.json's tensorrt.profiles)."""
    return [{"name": name, "max_batch_size": ranges["batch"](limits)[2], "max_tokens": ranges["seq"](limits)[2],
             "max_seq_len": limits.max_seq_len, "kv_capacity": limits.kv_capacity} for name, ranges in PROFILES.items()]


def external_data_files(graph, folder: Path) -> set[Path]:
    """The external data files a graph's initializers name (ONNX external_data "location"), under `folder`."""
    files = set()
    for t in graph.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                files.add(folder / entry.value)
    return files


def parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        out.append(f"node {e.node()} ({e.node_name() or 'unnamed'}, {e.node_operator() or 'no op'}): {e.desc()}")
    return out


@dataclass
class PlanResult:
    plan: Path
    builder: str
    builder_version: str
    sm: int
    seconds: float
    plan_bytes: int
    layers: int = 0            # layers of the parsed network (before the builder fuses them)
    gemm_layers: int = 0       # of which matrix multiplies (IMatrixMultiplyLayer: Gemm and MatMul nodes)
    weights_stripped: bool = False


def layer_counts(trt, network) -> tuple[int, int]:
    """(layers, matrix-multiply layers) of a parsed TensorRT network."""
    mm = trt.LayerType.MATRIX_MULTIPLY
    gemms = sum(network.get_layer(i).type == mm for i in range(network.num_layers))
    return network.num_layers, int(gemms)


def _stream_writer(trt, f):
    """A trt.IStreamWriter writing each chunk the builder serializes straight to the open file `f`."""
    class FileWriter(trt.IStreamWriter):
        def __init__(self):
            trt.IStreamWriter.__init__(self)
            self.bytes = 0

        def write(self, data) -> int:
            # data: the builder's buffer (a bytes-like object); written as given, never collected
            n = f.write(data)
            self.bytes += n
            return n
    return FileWriter()


def import_builder(kind: str):
    """The TensorRT module for a builder kind; ImportError when it is not installed."""
    if kind == RTX:
        import tensorrt_rtx as trt
    else:
        import tensorrt as trt
    return trt


def _network_flags(trt) -> int:
    # Strongly typed: explicit in TensorRT 10; TensorRT 11 and TensorRT-RTX always are (the flag is ignored).
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _recording_logger(trt, log_level: str):
    """A TensorRT logger that prints like trt.Logger and keeps the error lines, so a failed build can say why
    in its own exception (build_serialized_network only returns None)."""
    threshold = getattr(trt.Logger, log_level)

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.Logger.ERROR):
                self.errors.append(" ".join(str(msg).split()))
            if int(severity) <= int(threshold):
                import sys
                print(f"[TRT] {severity.name}: {msg}", file=sys.stderr, flush=True)

    return Recorder()


def _reason(errors: list[str]) -> str:
    """The error that says why: the last one that is not the CUDA-runtime catch-all TensorRT-RTX logs after a
    failed JIT step on a machine without a GPU ("cudaError 35: CUDA driver version is insufficient"), which
    follows the real reason (seen after the workspace error on the bf16 NVFP4 graph)."""
    specific = [e for e in errors if "catchCudaError" not in e]
    return (specific or errors or ["no error was logged"])[-1]


def build_plan(onnx_path: Path, out: Path, kind: str, sm: int, limits: Limits, log_level: str = "ERROR",
               workspace_bytes: int | None = None, shown_as: str | None = None,
               strip_weights: bool = False) -> PlanResult:
    """Parse onnx_path and write the serialized plan to `out` (streamed to a temporary file, then renamed).
    workspace_bytes: the builder's WORKSPACE memory-pool limit (None: TensorRT's default, the device's memory).
    shown_as: how messages name the graph (a staging folder's path would be stale once installed).
    strip_weights: a weight-stripped plan, refitted from onnx_path's weights at load."""
    import onnx
    trt = import_builder(kind)
    t0 = time.perf_counter()
    shown = shown_as or str(onnx_path)
    logger = _recording_logger(trt, log_level)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    # The parser maps the external data files (resolved beside the graph) and reads the weights through them;
    # the builder then copies them into the plan: release the mapped pages while both run (file_pages.py).
    data_files = external_data_files(graph, onnx_path.parent)
    with released_file_pages(data_files):
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = parser_errors(parser)
        raise PlanBuildError(f"{shown}: {kind}'s ONNX parser rejected the graph ({len(errors)} error(s)):\n  "
                             + "\n  ".join(errors))
    config = builder.create_builder_config()
    if kind == RTX:
        cc = RTX_COMPUTE_CAPABILITY.get(sm)
        if cc is None or not hasattr(trt.ComputeCapability, cc):
            have = sorted(m for m in dir(trt.ComputeCapability) if m.startswith("SM"))
            raise PlanBuildError(f"TensorRT-RTX {trt.__version__} cannot target SM {sm}; it has {', '.join(have)}")
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, cc), 0)
    for which in PROFILES:                      # profile index = position in PROFILES (decode 0, prefill 1)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(graph, limits, which).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)      # refit mode defaults to REFIT_IDENTICAL
    layers, gemms = layer_counts(trt, network)
    del graph
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as f, released_file_pages(data_files):
            if hasattr(builder, "build_serialized_network_to_stream"):
                ok = builder.build_serialized_network_to_stream(network, config, _stream_writer(trt, f))
            else:                                        # older TensorRT: one host buffer, written once
                serialized = builder.build_serialized_network(network, config)
                ok = serialized is not None
                if ok:
                    f.write(serialized)
                    del serialized
        if not ok:
            # The first error is the cause; on a machine without a GPU the streamed build also logs
            # "cudaError 35: CUDA driver version is insufficient" after it, which says nothing about the plan.
            causes = [m for m in logger.errors if "cudaError 35" not in m] or logger.errors
            reason = causes[0] if causes else "no error was logged"
            why = (" (weight-stripped and refittable builds need a CUDA device: TensorRT-RTX's JIT compiles "
                   "refittable layers on it)") if strip_weights else ""
            raise PlanBuildError(f"{shown}: {kind} {trt.__version__} could not build a plan for SM {sm}: {reason}"
                                 f"{why}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return PlanResult(out, kind, trt.__version__, sm, round(time.perf_counter() - t0, 3), out.stat().st_size,
                      layers, gemms, strip_weights)


def parses(onnx_path: Path, kind: str = RTX) -> list[str]:
    """TensorRT's own verdict on a graph without building: [] if its parser accepts it, else the errors."""
    trt = import_builder(kind)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    return [] if parser.parse_from_file(str(onnx_path)) else parser_errors(parser)


UNVALIDATED_GPU_BUILD = ("built with standard TensorRT on this GPU by code written against its Python API and "
                         "not yet run on any GPU by this project")
__all__ = ["Limits", "PlanResult", "PROFILES", "build_plan", "profile_limits", "layer_counts", "parses", "profile_shapes", "RTX", "TENSORRT",
           "UNVALIDATED_GPU_BUILD"]
