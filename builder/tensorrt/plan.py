"""Build a serialized TensorRT plan from an ONNX file.

Both builders take the same path: OnnxParser (its errors listed by node index, name and op), one
optimization profile per kind of call (decode, prefill chunk) whose dynamic dimensions come from the engine's
limits (`profile_shapes`, `profile_limits`), a
strongly typed network (the graph's Q/DQ and casts fix every precision), no timing cache (TensorRT-RTX
would query a GPU for it). TensorRT-RTX targets one compute capability, ahead of time: its kernels are
compiled on the GPU when the plan is loaded, so a plan built here proves the graph parses, type-checks
and lowers, not that it runs. Standard TensorRT builds for the GPU it runs on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from builder.tensorrt import PlanBuildError
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
# name is an error, never a guess.
PROFILES = {
    "decode": {"batch": lambda lim: (1, 1, lim.max_batch_size), "seq": lambda lim: (1, 1, 1)},
    "prefill": {"batch": lambda lim: (1, 1, lim.prefill_batch_size),
                "seq": lambda lim: (1, lim.max_tokens, lim.max_tokens)},
}


def profile_shapes(model, limits: Limits, profile: str = "decode") -> dict[str, tuple[tuple[int, ...], ...]]:
    """Graph inputs -> (min, opt, max) shapes in one profile. Fixed dims are kept; symbolic ones looked up."""
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
        if dynamic:                     # every profile must give every dynamic input, fixed range or not
            shapes[inp.name] = tuple(tuple(r[k] for r in ranges) for k in range(3))
    return shapes


def profile_limits(limits: Limits) -> list[dict]:
    """What each profile of a plan admits, in profile order (engine.json's tensorrt.profiles)."""
    return [{"name": name, "max_batch_size": ranges["batch"](limits)[2], "max_tokens": ranges["seq"](limits)[2],
             "max_seq_len": limits.max_seq_len, "kv_capacity": limits.kv_capacity} for name, ranges in PROFILES.items()]


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


def build_plan(onnx_path: Path, out: Path, kind: str, sm: int, limits: Limits, log_level: str = "ERROR") -> PlanResult:
    """Parse onnx_path and write the serialized plan to `out` (via a temporary file and a rename)."""
    import onnx
    trt = import_builder(kind)
    t0 = time.perf_counter()
    logger = trt.Logger(getattr(trt.Logger, log_level))
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data files beside the graph.
    if not parser.parse_from_file(str(onnx_path)):
        errors = parser_errors(parser)
        raise PlanBuildError(f"{onnx_path}: {kind}'s ONNX parser rejected the graph ({len(errors)} error(s)):\n  "
                             + "\n  ".join(errors))
    config = builder.create_builder_config()
    if kind == RTX:
        cc = RTX_COMPUTE_CAPABILITY.get(sm)
        if cc is None or not hasattr(trt.ComputeCapability, cc):
            have = sorted(m for m in dir(trt.ComputeCapability) if m.startswith("SM"))
            raise PlanBuildError(f"TensorRT-RTX {trt.__version__} cannot target SM {sm}; it has {', '.join(have)}")
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, cc), 0)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    for which in PROFILES:                      # profile index = position in PROFILES (decode 0, prefill 1)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(graph, limits, which).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PlanBuildError(f"{onnx_path}: {kind} {trt.__version__} could not build a plan for SM {sm} "
                             f"(its log above says why)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(serialized)
    tmp.replace(out)
    return PlanResult(out, kind, trt.__version__, sm, round(time.perf_counter() - t0, 3), out.stat().st_size)


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
__all__ = ["Limits", "PlanResult", "PROFILES", "build_plan", "parses", "profile_limits", "profile_shapes", "RTX", "TENSORRT",
           "UNVALIDATED_GPU_BUILD"]
