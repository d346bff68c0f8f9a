"""Quantized linears in ONNX, in the patterns TensorRT imports as FP8 / FP4 GEMMs (ModelOpt's export).

Per format (spec.registry.quant_formats names), for a linear y = act(x) @ deq(W).T:
- "fp8" (W8A8): W is a FLOAT8E4M3FN initializer, DequantizeLinear(W, weight_scale); x goes through
  QuantizeLinear/DequantizeLinear with the calibrated per-tensor input_scale (saturating, as numerics.fp8).
- "nvfp4" (W4A4): an NVFP4 weight and NVFP4 dynamic quantization of x (plugins/onnx/fp4.py, in the graph's
  lowering: FLOAT4E2M1 Q/DQ and `trt::TRT_FP4DynamicQuantize` for TensorRT, which fuses them into an FP4
  GEMM on Blackwell; standard ops for ONNX Runtime's CPU provider); the activations' global scale is the
  calibrated input_scale, a build-time constant.
- "w4a16-nvfp4": the NVFP4 weight pattern, x unquantized.
- "mxfp4" (W4A16): MXFP4 weights reach the graph as NVFP4 through the lossless transcode
  (numerics.transcode): TensorRT's parser rejects E8M0 initializers. A block NVFP4 cannot hold exactly
  is an error naming the tensor and the block.
Every DequantizeLinear here outputs fp32 (its scale's type); a Cast follows when the graph runs in
fp16/bf16, as in ModelOpt's graphs. Values are bit-identical to numerics' dequantize.

Experts: TensorRT accepts FP4/FP8 tensors only as inputs of DequantizeLinear (or reshape/concat): a
Gather of an FP4 initializer by expert index fails to build ("has datatype FP4 but is not consumed by
... IDequantizeLayer"), and a Gather after dequantizing all experts would read all of them. So each
expert's weights are initializers of their own in the pattern above, and plugins/onnx/experts.py (the
one sparse MoE lowering of every format) runs each expert's GEMM on its own sorted rows: FP4 GEMMs, and
an expert no token chose runs zero rows and reads nothing. Same values as the reference runtime, bit for
bit before the GEMM's float accumulation.

Registered in plugins.onnx.linear's LINEAR_EMITTERS / EXPERT_GEMMS (`quant_linear`, `quant_expert_gemm`); this
module does not import that one.
Large quantized initializers are written lazily like the exporter's other weights (one tensor at a time).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from numerics.fp8 import FP8Tensor
from numerics.mxfp4 import MXFP4Weight
from numerics.nvfp4 import NVFP4Tensor
from plugins.onnx import fp4
from plugins.onnx.gemm import dense_bias, gemm
from spec.canonical import input_scale_name

FLOAT = TensorProto.FLOAT


class QuantGraphError(ValueError):
    """A weight or scale that cannot be put into the graph as declared."""


# -- initializers (lazy: bytes produced when the graph is saved) ---------------------------------------------
_ELEM_NAMES = {TensorProto.FLOAT4E2M1: "float4e2m1", TensorProto.FLOAT8E4M3FN: "float8e4m3fn", TensorProto.FLOAT: "float32"}


def _lazy(g, name: str, elem: int, shape, produce) -> str:
    """An initializer of `elem` whose raw bytes `produce()` returns, called only when the graph is written."""
    return g.packed_weight(g.fresh(name), _ELEM_NAMES[elem], shape, lambda: [produce()])


def _fp8_zero(g, name: str) -> str:
    """An FP8 E4M3 zero: QuantizeLinear's zero point, which also types its output as FP8."""
    return g.raw(name, TensorProto.FLOAT8E4M3FN, (), [b"\x00"])


def _bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


# -- weight values -----------------------------------------------------------------------------------------
def as_nvfp4(weight, name: str) -> NVFP4Tensor:
    """An NVFP4 weight, or an MXFP4 one transcoded losslessly (one global scale for the whole tensor:
    all experts of a projection share it). A lossy block is an error naming it."""
    if isinstance(weight, NVFP4Tensor):
        return weight
    if isinstance(weight, MXFP4Weight):
        from numerics.transcode import lossy_blocks, mxfp4_to_nvfp4_lossless
        lossy = lossy_blocks(weight.blocks, weight.scales)
        if lossy.any():
            first = tuple(int(i) for i in np.argwhere(lossy)[0])
            axes = "expert, row, block of 32" if lossy.ndim == 3 else "row, block of 32"
            raise QuantGraphError(
                f"{name}: {int(lossy.sum())} MXFP4 block(s) cannot be represented exactly in NVFP4, the first at "
                f"{first} ({axes}): its exponent is more than 17 below the tensor's largest, beyond an e4m3 "
                f"block scale. TensorRT cannot take E8M0 scales; quantize this model to NVFP4 from float "
                f"weights instead (--quant nvfp4 from a bf16 checkpoint)")
        # the MXFP4 codes verbatim (-0 nibbles kept: the same values), so the graph's FP4 initializers can be the
        # checkpoint's bytes (plugins/onnx/shared_weights.py)
        return mxfp4_to_nvfp4_lossless(weight.blocks, weight.scales, negative_zero="keep")
    raise QuantGraphError(f"{name}: expected an NVFP4 (or MXFP4) weight, got {type(weight).__name__}; the "
                          f"network declares this module in an FP4 format")


def as_fp8(weight, name: str) -> FP8Tensor:
    if isinstance(weight, FP8Tensor):
        return weight
    raise QuantGraphError(f"{name}: the network declares this module 'fp8' but the checkpoint holds "
                          f"{type(weight).__name__}; expected numerics.fp8.FP8Tensor")


def input_scale_value(input_scale, name: str) -> np.float32:
    """The calibrated activation scale (several, e.g. per expert or gate and up, share their max, as the
    reference runtime does)."""
    if input_scale is None:
        raise QuantGraphError(f"{name}: this format quantizes activations and needs the calibrated input_scale "
                              f"({input_scale_name(name)}), which the checkpoint lacks; build with calibration "
                              f"(--calib-file) or use a weight-only format")
    s = np.float32(np.max(np.asarray(input_scale, dtype=np.float32)))
    if not (np.isfinite(s) and s > 0):
        raise QuantGraphError(f"{name}: input_scale must be a finite positive number, got {s}")
    return s


# -- dequantized weights (all rows; the pattern TensorRT fuses into its GEMMs) -------------------------------
def _cast(g, x: str, dtype: int) -> str:
    return x if dtype == FLOAT else g.op("Cast", x, to=dtype)


def _f32_bytes(v) -> bytes:
    return np.asarray(v, dtype=np.float32).reshape(()).tobytes()


def emit_nvfp4_weight(g, get, shape: tuple[int, ...], name: str, dtype: int = FLOAT) -> str:
    """[..., out, in] dequantized in the graph's lowering (plugins.onnx.fp4). `get()` returns the NVFP4Tensor;
    it is called only when the graph is written."""
    return _cast(g, fp4.emit_nvfp4_weight(g, get, shape, name), dtype)


def emit_fp8_weight(g, get, shape: tuple[int, ...], name: str, dtype: int = FLOAT) -> str:
    data = _lazy(g, f"{name}.fp8", TensorProto.FLOAT8E4M3FN, tuple(shape), lambda: _bytes(get().data))
    scale = _lazy(g, f"{name}.scale", FLOAT, (), lambda: _f32_bytes(get().scale))
    return _cast(g, g.op("DequantizeLinear", data, scale, name=f"{name}.dq"), dtype)


# -- activations ---------------------------------------------------------------------------------------------
def emit_nvfp4_activation(g, x: str, input_scale, name: str, dtype: int = FLOAT) -> str:
    """x -> NVFP4 fake-quantized x with the calibrated global scale, in the graph's lowering (plugins.onnx.fp4)."""
    return _cast(g, fp4.emit_nvfp4_activation(g, x, input_scale_value(input_scale, name), name), dtype)


_NUMPY_DTYPE = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def emit_fp8_activation(g, x: str, input_scale, name: str, dtype: int = FLOAT) -> str:
    """x -> QuantizeLinear (e4m3, saturating) -> DequantizeLinear with the calibrated per-tensor scale.
    The scale takes x's dtype, as TensorRT's strongly typed Q/DQ wants; bf16 graphs (numpy has no bf16
    constant) quantize a float32 copy of x."""
    s = input_scale_value(input_scale, name)
    via_float = dtype not in _NUMPY_DTYPE
    if via_float:
        x = g.op("Cast", x, to=FLOAT)
    scale = g.const(np.asarray(s, dtype=_NUMPY_DTYPE.get(dtype, np.float32)), f"{name}.input_scale")
    q = g.op("QuantizeLinear", x, scale, _fp8_zero(g, f"{name}.zero_point"), name=f"{name}.act_q")
    dq = g.op("DequantizeLinear", q, scale, name=f"{name}.act_dq")
    return g.op("Cast", dq, to=dtype) if via_float else dq


def _no_activation(g, x, input_scale, name, dtype):
    return x


# format -> (weight value check, weight emitter, activation emitter)
_FORMATS = {
    "nvfp4": (as_nvfp4, emit_nvfp4_weight, emit_nvfp4_activation),
    "w4a16-nvfp4": (as_nvfp4, emit_nvfp4_weight, _no_activation),
    "mxfp4": (as_nvfp4, emit_nvfp4_weight, _no_activation),
    "fp8": (as_fp8, emit_fp8_weight, emit_fp8_activation),
}
QUANT_FORMATS_WITH_PATTERN = tuple(_FORMATS)


def _format(quant: str, name: str):
    try:
        return _FORMATS[quant]
    except KeyError:
        raise QuantGraphError(f"{name}: no ONNX pattern for quant format {quant!r}; quantized formats with one: "
                              f"{', '.join(_FORMATS)} ('bf16' modules are plain MatMuls)") from None


def emit_activation_quant(g, x: str, quant: str, input_scale, name: str, dtype: int = FLOAT) -> str:
    """What a format does to a GEMM's input (identity for weight-only formats)."""
    return _format(quant, name)[2](g, x, input_scale, name, dtype)


def emit_dequantized_weight(g, weight, quant: str, name: str, dtype: int = FLOAT) -> str:
    """The whole weight [..., out, in], dequantized in the graph from its quantized initializers."""
    check, emit_weight, _ = _format(quant, name)
    return emit_weight(g, lambda: check(weight, name), tuple(weight.shape), name, dtype)


# Whole quantized tensors (an MXFP4 one transcoded) are produced when the graph is written, not when it is
# built, and only the last few are kept: the writer asks for one expert slice after another, and a graph of
# a large model never holds more than these in memory.
KEEP_VALUES = 3


def _loader(g, weights, name: str, check):
    def get():
        cache = g.__dict__.setdefault("_quant_values", {})
        if name not in cache:
            cache[name] = check(weights.value(name), name)
            while len(cache) > KEEP_VALUES:
                cache.pop(next(iter(cache)))
        return cache[name]
    return get


# -- the emitters plugins.onnx.linear dispatches to ----------------------------------------------------------
def _input_scale(linears, weights):
    names = [input_scale_name(lin.weight) for lin in linears]
    found = [np.asarray(weights.value(n), dtype=np.float32) for n in names if n in weights]
    return max(float(v.max()) for v in found) if found else None


def quant_linear(g, x: str, linears, weights) -> str:
    """act(x) @ deq(W).T + b for one or several linears of one quantized format (outputs concatenated)."""
    quant, first = linears[0].quant, linears[0].weight
    for lin in linears:
        weights.check(lin.weight, (lin.out_features, lin.in_features))
    check, emit_weight, _ = _format(quant, first)
    xq = emit_activation_quant(g, x, quant, _input_scale(linears, weights), first, g.elem)
    ws = [emit_weight(g, _loader(g, weights, lin.weight, check), (lin.out_features, lin.in_features), lin.weight,
                      g.elem) for lin in linears]
    w = ws[0] if len(ws) == 1 else g.op("Concat", *ws, axis=0)
    return gemm(g, xq, w, dense_bias(g, linears, weights), linears[0].in_features,
                 sum(lin.out_features for lin in linears))


# -- experts: (token, slot) pairs sorted by expert ----------------------------------------------------------
def _expert_slice(w, e: int):
    """Expert e's [out, in] weight of a quantized [E, out, in] one (the global scale stays shared)."""
    if isinstance(w, NVFP4Tensor):
        return NVFP4Tensor(w.packed[e], w.block_scale[e], w.global_scale, tuple(w.shape[1:]))
    return FP8Tensor(w.data[e], w.scale)


def quant_expert_gemm(g, linears, weights):
    """Expert e's rows [m, in] -> act(rows) @ deq(W_e).T [m, sum(out)] (plugins.onnx.experts sorts the pairs and
    calls this per expert): its quantized weights in the format's pattern (FLOAT4E2M1 / FLOAT8E4M3FN
    initializers and Q/DQ: what TensorRT turns into FP4/FP8 GEMMs), the activation quantizer on its own rows.
    The activations' global scale is shared by all experts (the max of their calibrated scales), as in the
    reference runtime."""
    quant, first = linears[0].quant, linears[0].weight
    check, emit_weight, emit_act = _format(quant, first)
    E, n_in = linears[0].num_experts, linears[0].in_features
    for lin in linears:
        weights.check(lin.weight, (E, lin.out_features, n_in))
    loaders = [_loader(g, weights, lin.weight, check) for lin in linears]
    in_scale = _input_scale(linears, weights)
    if emit_act is not _no_activation:
        in_scale = input_scale_value(in_scale, first)        # a missing scale is named by its module

    if g.lowering in fp4.ROUTED_EXPERT_LOWERINGS and check is as_nvfp4:
        stored = [fp4.packed_expert_initializers(g, get, (E, lin.out_features, n_in), lin.weight)
                  for lin, get in zip(linears, loaders)]
        shapes = [(E, lin.out_features, n_in) for lin in linears]

        def routed_e(x_rows: str, e: int, pairs) -> str:
            tag = f"{first}.expert{e}"
            y = fp4.routed_expert_gemm(g, stored, shapes, x_rows, e, pairs,
                                       lambda x: emit_act(g, _cast(g, x, FLOAT) if g.elem != FLOAT else x, in_scale, tag,
                                                        FLOAT), tag, FLOAT)
            return _cast(g, y, g.elem)
        return routed_e

    def gemm_e(x_rows: str, e: int, pairs=None) -> str:
        xq = emit_act(g, x_rows, in_scale, f"{first}.expert{e}", g.elem)                 # [m_e, in]
        ys = []
        for lin, get in zip(linears, loaders):
            w = emit_weight(g, lambda get=get, e=e: _expert_slice(get(), e), (lin.out_features, n_in),
                            f"{lin.weight}.expert{e}", g.elem)
            ys.append(g.op("Gemm", xq, w, transB=1, name=f"{lin.weight}.expert{e}.gemm"))
        return ys[0] if len(ys) == 1 else g.op("Concat", *ys, axis=-1)
    return gemm_e
