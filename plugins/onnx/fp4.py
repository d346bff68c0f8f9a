"""NVFP4 in ONNX, in each lowering (plugins.onnx.graph.LOWERINGS, chosen per graph as `Graph.lowering`):
an FP4 weight, and W4A4's dynamic quantizer of a GEMM's input.

- "tensorrt" (ModelOpt's export pattern; TensorRT fuses it into FP4 GEMMs): the weight is a FLOAT4E2M1
  initializer; DequantizeLinear(FP8 E4M3 block scales, fp32 global scale) gives the block scales, then
  DequantizeLinear(weight, those; axis=-1, block_size=16): two levels, because a DequantizeLinear scale
  cannot itself be FP8. The activation goes through `trt::TRT_FP4DynamicQuantize(x, global; axis=-1,
  block_size=16, scale_type=FLOAT8E4M3FN)` -> (x_fp4, e4m3 block scales), then the same two levels.
- "onnxruntime-cpu" (ONNX Runtime's CPU provider has no FLOAT4E2M1 tensors and no trt:: ops): the weight's
  e2m1 codes are a uint8 initializer, one code per element, decoded by a Gather on numerics' 16-entry e2m1
  table (ONNX Runtime folds that once at session start), times the same block scales per block of 16. The
  activation quantizer is written out in standard ops with numerics.nvfp4.quantize_nvfp4_activations'
  arithmetic: per-block amax, the e4m3 block scale through a real FLOAT8E4M3FN Cast, and numerics' e2m1
  rounding (nearest, ties to even, saturating) as the count of numerics.mxfp4.E2M1_BOUNDS |q| passes.
- "onnxruntime-cpu-packed": as "onnxruntime-cpu", except FP4 experts: kept as their bytes (ONNX Runtime
  folds the table decode above into fp32 initializers at session start, 8x the packed bytes) and decoded at
  run time for the routed experts only (routed_expert_gemm); its bf16 weights stay bf16 too (plugins/onnx/stored.py).
Both give numerics' values bit for bit (onnx.reference on the first, ONNX Runtime on the second:
tests/plugins/test_onnx_quant.py). Not modelled on the CPU: the GPU's approximate reciprocals, and block
scales whose reciprocal overflows float32 (numerics divides there).

Each emitter returns float32 values of x's (or the weight's) shape; the caller casts to the graph's dtype.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import TensorProto

from numerics.mxfp4 import E2M1_BOUNDS, E2M1_TIES_UP, FP4_VALUES, unpack_nibbles
from numerics.nvfp4 import BLOCK, E2M1_MAX, E4M3_MAX
from plugins.onnx.graph import ORT_CPU, ORT_CPU_PACKED, TENSORRT, Graph

# Custom-op domain of TensorRT's ONNX parser (TRT_FP4DynamicQuantize and friends).
TRT_DOMAIN = "trt"
INT_MAX = np.iinfo(np.int64).max


def _block_scales(g: Graph, get, shape: tuple[int, ...], name: str) -> str:
    """fp32 block scales [..., K/16] of an NVFP4 weight: DequantizeLinear(e4m3 block scales, fp32 global)."""
    s8 = g.packed_weight(g.fresh(f"{name}.block_scale"), "float8e4m3fn", shape[:-1] + (shape[-1] // BLOCK,),
                         lambda: [get().block_scale])
    g2 = g.packed_weight(g.fresh(f"{name}.global_scale"), "float32", (),
                         lambda: [np.float32(get().global_scale)])
    return g.op("DequantizeLinear", s8, g2, name=f"{name}.dq_scale")


def _blocked(g: Graph, x: str, name: str) -> tuple[str, str]:
    """x [..., K] -> (x as [..., K/16, 16], x's shape). K/16 comes from x's shape, not -1: x may have zero rows
    (an expert no token chose)."""
    shape = g.op("Shape", x, name=f"{name}.shape")
    lead = g.op("Slice", shape, g.ints([0]), g.ints([-1]))
    blocks = g.op("Div", g.op("Slice", shape, g.ints([-1]), g.ints([INT_MAX])), g.ints([BLOCK]))
    return g.op("Reshape", x, g.op("Concat", lead, blocks, g.ints([BLOCK]), axis=0), name=f"{name}.blocks"), shape


def _times_block_scales(g: Graph, values: str, scales: str, name: str) -> str:
    """values [..., K] (fp32) * scales [..., K/16], each scale applied to its block of 16: a DequantizeLinear's
    arithmetic (one fp32 multiply per element)."""
    blocked, shape = _blocked(g, values, name)
    scaled = g.op("Mul", blocked, g.op("Unsqueeze", scales, g.ints([-1])), name=f"{name}.scale")
    return g.op("Reshape", scaled, shape, name=f"{name}.dq")


# -- "tensorrt" --------------------------------------------------------------------------------------------------
def _trt_weight(g: Graph, get, shape: tuple[int, ...], name: str) -> str:
    codes = g.packed_weight(g.fresh(f"{name}.fp4"), "float4e2m1", shape, lambda: [get().packed])
    scales = _block_scales(g, get, shape, name)
    return g.op("DequantizeLinear", codes, scales, name=f"{name}.dq", axis=-1, block_size=BLOCK)


def _trt_activation(g: Graph, x: str, input_scale: np.float32, name: str) -> str:
    g.opset_imports[TRT_DOMAIN] = 1
    gs = g.f32(input_scale, f"{name}.input_scale")
    x_fp4, x_sf = g.op("TRT_FP4DynamicQuantize", x, gs, outputs=2, name=f"{name}.act_fp4", domain=TRT_DOMAIN,
                       axis=-1, block_size=BLOCK, scale_type=TensorProto.FLOAT8E4M3FN)
    sf = g.op("DequantizeLinear", x_sf, gs, name=f"{name}.act_dq_scale")
    return g.op("DequantizeLinear", x_fp4, sf, name=f"{name}.act_dq", axis=-1, block_size=BLOCK)


# -- "onnxruntime-cpu" -------------------------------------------------------------------------------------------
def _cpu_weight(g: Graph, get, shape: tuple[int, ...], name: str) -> str:
    codes = g.packed_weight(g.fresh(f"{name}.e2m1_codes"), "uint8", shape, lambda: [unpack_nibbles(get().packed)])
    scales = _block_scales(g, get, shape, name)
    table = g.shared_const("e2m1_values", FP4_VALUES)
    values = g.op("Gather", table, g.op("Cast", codes, to=TensorProto.INT32), axis=0, name=f"{name}.decode")
    return _times_block_scales(g, values, scales, name)


def _cpu_activation(g: Graph, x: str, input_scale: np.float32, name: str) -> str:
    """quantize_nvfp4_activations' arithmetic: sf8 = e4m3(min((1/s) * (amax * (1/6)), 448)); q = x_block *
    (1 / (sf8 * (1/(1/s)))), 0 where sf8 is 0; codes = e2m1(q); values = e2m1 value * (sf8 * s)."""
    tag = f"{name}.act_fp4"
    sf_scale = np.float32(1.0) / np.float32(input_scale)
    # 1/s and 1/(1/s) are folded here, as numerics computes them, so that ONNX Runtime's Mul/Div fusion
    # cannot re-associate (1/s) * (amax/6) into amax/6/s, which rounds differently.
    inv_sf_scale = np.float32(1.0) / sf_scale
    x32 = x if g.dtype == "float32" else g.op("Cast", x, to=TensorProto.FLOAT)
    blocked, shape = _blocked(g, x32, tag)
    amax = g.op("ReduceMax", g.op("Abs", blocked), g.ints([-1]), keepdims=0, name=f"{tag}.amax")
    sixth = g.op("Mul", amax, g.f32(np.float32(1.0) / E2M1_MAX, f"{tag}.sixth"))
    sf = g.op("Min", g.op("Mul", g.f32(sf_scale, f"{tag}.sf_scale"), sixth), g.f32(E4M3_MAX, f"{tag}.e4m3_max"))
    sf8 = g.op("Cast", g.op("Cast", sf, to=TensorProto.FLOAT8E4M3FN, name=f"{tag}.sf8"), to=TensorProto.FLOAT)
    zero = g.f32(0.0, f"{tag}.zero")
    recip = g.op("Div", g.f32(1.0, f"{tag}.one"), g.op("Mul", sf8, g.f32(inv_sf_scale, f"{tag}.inv_sf_scale")))
    scale = g.op("Where", g.op("Equal", sf8, zero), zero, recip)
    q = g.op("Mul", blocked, g.op("Unsqueeze", scale, g.ints([-1])), name=f"{tag}.q")
    magnitude = g.op("Abs", q)
    code = None
    for i, (bound, tie_up) in enumerate(zip(E2M1_BOUNDS, E2M1_TIES_UP)):
        passed = g.op("GreaterOrEqual" if tie_up else "Greater", magnitude, g.f32(bound, f"{tag}.bound{i}"))
        passed = g.op("Cast", passed, to=TensorProto.INT32)
        code = passed if code is None else g.op("Add", code, passed)       # ONNX Runtime's Sum takes no ints
    values = g.op("Mul", g.op("Gather", g.shared_const("e2m1_magnitudes", FP4_VALUES[:8]), code, axis=0),
                  g.op("Sign", q), name=f"{tag}.values")
    out_scales = g.op("Mul", sf8, g.f32(input_scale, f"{name}.input_scale"))
    scaled = g.op("Mul", values, g.op("Unsqueeze", out_scales, g.ints([-1])), name=f"{tag}.scale")
    return g.op("Reshape", scaled, shape, name=f"{name}.act_dq")


# lowering -> (weight emitter, activation emitter)
EMITTERS: dict[str, tuple[Callable, Callable]] = {
    TENSORRT: (_trt_weight, _trt_activation),
    ORT_CPU: (_cpu_weight, _cpu_activation),
    ORT_CPU_PACKED: (_cpu_weight, _cpu_activation),
}


# -- "onnxruntime-cpu-packed": FP4 experts decoded at run time, routed experts only ------------------------------
def _e4m3_values() -> np.ndarray:
    import ml_dtypes
    return np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


_E4M3_VALUES = _e4m3_values()
_BYTES = np.arange(256)
_E2M1_BYTE_VALUES = np.stack([FP4_VALUES[_BYTES & 0x0F], FP4_VALUES[_BYTES >> 4]], axis=-1).astype(np.float32)


def _packed_expert_initializers(g: Graph, get, shape: tuple[int, ...], name: str) -> tuple[str, str, str]:
    """[E, out, in/2] packed codes (uint8, two a byte, low nibble first), [E, out, in/16] e4m3 block scales and
    the fp32 global scale, as stored: ONNX Runtime keeps uint8 and FP8 initializers as they are."""
    E, out, k = shape
    packed = g.packed_weight(g.fresh(f"{name}.packed"), "uint8", (E, out, k // 2), lambda: [get().packed])
    # e4m3 block scales as their bytes: ONNX's Gather takes no FLOAT8 tensors, so they are decoded by a 256-entry
    # table after the Gather (the same values as a DequantizeLinear of the FLOAT8 tensor)
    s8 = g.packed_weight(g.fresh(f"{name}.block_scale_bytes"), "uint8", (E, out, k // BLOCK),
                         lambda: [np.ascontiguousarray(get().block_scale).view(np.uint8)])
    g2 = g.packed_weight(g.fresh(f"{name}.global_scale"), "float32", (), lambda: [np.float32(get().global_scale)])
    return packed, s8, g2


def _decode_routed(g: Graph, stored: tuple[str, str, str], expert: str, shape: tuple[int, ...], tag: str) -> str:
    """Expert `expert` ([1] int64, a run-time value)'s weight [out, in] in fp32 from the packed initializers:
    Gather its codes and scales (a run-time index, so ONNX Runtime cannot fold the decode into a float
    initializer at session start), each byte's two e2m1 values from a 256-entry table, times the block scales.
    The same values as numerics' dequantize."""
    packed, s8, g2 = stored
    _, out, k = shape
    codes = g.op("Squeeze", g.op("Gather", packed, expert, axis=0), g.ints([0]), name=f"{tag}.codes")  # [out, k/2]
    # one Gather per byte on a [256, 2] table (its low nibble's e2m1 value, then its high one's): the nibble split
    # (BitwiseAnd / BitShift, a Concat) folded into the table, one int32 index per two weights
    pairs = g.op("Gather", g.shared_const("e2m1_byte_values", _E2M1_BYTE_VALUES),
                 g.op("Cast", codes, to=TensorProto.INT32), axis=0, name=f"{tag}.decode")           # [out, k/2, 2]
    values = g.op("Reshape", pairs, g.ints([out, k]))
    s_bytes = g.op("Cast", g.op("Squeeze", g.op("Gather", s8, expert, axis=0), g.ints([0])), to=TensorProto.INT32)
    s_values = g.op("Gather", g.shared_const("e4m3_values", _E4M3_VALUES), s_bytes, axis=0, name=f"{tag}.scale_decode")
    scales = g.op("Mul", s_values, g2, name=f"{tag}.dq_scale")
    return _times_block_scales(g, values, scales, tag)


def _subgraph(g: Graph, build: Callable[[], str], name: str, elem: int):
    """The nodes `build()` adds to g, taken out as a graph whose one output is build()'s value (inner values
    may read the outer graph's names: ONNX's outer scope)."""
    from onnx import helper
    outer, g.nodes = g.nodes, []
    try:
        value = build()
        out = g.fresh(f"{name}.out")
        g.op("Identity", value, outputs=[out], name=f"{name}.identity")
        body = g.nodes
    finally:
        g.nodes = outer
    return helper.make_graph(body, name, [], [helper.make_tensor_value_info(out, elem, None)])


def routed_expert_gemm(g: Graph, stored_by_linear, shapes, x_rows: str, e: int, pairs, emit_act, tag: str,
                       elem: int) -> str:
    """Expert e's rows [m, in] -> [m, sum(out)], its FP4 weights decoded only when m > 0: an If on its row
    count (an expert no pair chose runs nothing), whose branch takes the expert id from its first sorted row."""
    start, end = pairs.bounds(e)
    routed = g.op("Squeeze", g.op("Greater", end, start), g.ints([0]), name=f"{tag}.routed")

    def then():
        expert = g.op("Gather", pairs.expert_of_sorted, start, axis=0, name=f"{tag}.id")     # = e, at run time
        xq = emit_act(x_rows)
        ys = [g.op("Gemm", xq, _decode_routed(g, stored, expert, shape, f"{tag}.{i}"), transB=1,
                   name=f"{tag}.{i}.gemm") for i, (stored, shape) in enumerate(zip(stored_by_linear, shapes))]
        return ys[0] if len(ys) == 1 else g.op("Concat", *ys, axis=-1)

    def skip():
        width = sum(shape[1] for shape in shapes)
        return g.op("Slice", g.op("ConstantOfShape", g.ints([1, width]),
                                  value=_zero_tensor(elem)), g.ints([0]), g.ints([0]), g.ints([0]))   # [0, out]
    return g.op("If", routed, name=f"{tag}.if_routed", then_branch=_subgraph(g, then, f"{tag}.then", elem),
                else_branch=_subgraph(g, skip, f"{tag}.else", elem))


def _zero_tensor(elem: int):
    from onnx import helper
    return helper.make_tensor("zero", elem, [1], [0])


def packed_expert_initializers(g: Graph, get, shape, name):
    return _packed_expert_initializers(g, get, tuple(shape), name)


# lowerings whose FP4 experts are decoded at run time, routed experts only (plugins.onnx.quant.quant_expert_gemm)
ROUTED_EXPERT_LOWERINGS = (ORT_CPU_PACKED,)


def emit_nvfp4_weight(g: Graph, get, shape: tuple[int, ...], name: str) -> str:
    """The NVFP4 weight [..., out, in], dequantized in the graph (float32). `get()` returns the NVFP4Tensor;
    it is called only when the graph is written."""
    return EMITTERS[g.lowering][0](g, get, tuple(shape), name)


def emit_nvfp4_activation(g: Graph, x: str, input_scale: np.float32, name: str) -> str:
    """x -> NVFP4 fake-quantized x (float32), with the calibrated global scale `input_scale`."""
    return EMITTERS[g.lowering][1](g, x, np.float32(input_scale), name)


def tensorrt_only(model) -> list[str]:
    """What in a finished ModelProto ONNX Runtime's CPU provider cannot run (FLOAT4E2M1 initializers, trt::
    nodes), named; [] for a graph it can run."""
    found = [f"initializer {t.name} (FLOAT4E2M1)" for t in model.graph.initializer
             if t.data_type == TensorProto.FLOAT4E2M1]
    found += [f"node {n.name} ({n.domain}::{n.op_type})" for n in model.graph.node if n.domain == TRT_DOMAIN]
    return found
