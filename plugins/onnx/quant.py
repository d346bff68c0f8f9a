"""Quantized linears in ONNX, in the patterns TensorRT imports as FP8 / FP4 GEMMs (ModelOpt's export).

Per format (spec.registry.quant_formats names), for a linear y = act(x) @ deq(W).T:
- "fp8" (W8A8): W is a FLOAT8E4M3FN initializer, DequantizeLinear(W, weight_scale); x goes through
  QuantizeLinear/DequantizeLinear with the calibrated per-tensor input_scale (saturating, as numerics.fp8).
- "nvfp4" (W4A4): W is a FLOAT4E2M1 initializer; DequantizeLinear(FP8 E4M3 block scales, fp32 global
  scale) gives the fp32 block scales, then DequantizeLinear(W, those, axis=-1, block_size=16): two
  levels, because a DequantizeLinear scale cannot itself be FP8. x goes through
  `trt::TRT_FP4DynamicQuantize(x, global; axis=-1, block_size=16, scale_type=FLOAT8E4M3FN)` -> (x_fp4,
  e4m3 block scales) and the same two DequantizeLinears; the global scale is the calibrated input_scale,
  a build-time constant. TensorRT fuses this into an FP4 GEMM on Blackwell.
- "w4a16-nvfp4": the NVFP4 weight pattern, x unquantized.
- "mxfp4" (W4A16): MXFP4 weights reach the graph as NVFP4 through the lossless transcode
  (numerics.transcode): TensorRT's parser rejects E8M0 initializers. A block NVFP4 cannot hold exactly
  is an error naming the tensor and the block.
Every DequantizeLinear here outputs fp32 (its scale's type); a Cast follows when the graph runs in
fp16/bf16, as in ModelOpt's graphs. Values are bit-identical to numerics' dequantize.

Experts (gatherable): TensorRT accepts FP4/FP8 tensors only as inputs of DequantizeLinear (or
reshape/concat): a Gather of an FP4 initializer fails to build ("has datatype FP4 but is not consumed
by ... IDequantizeLayer"), and Gather after a DequantizeLinear of all experts would dequantize all of
them. So expert weights are stored as their raw bytes packed four to an int32 word (UINT8 initializers
are widened to INT32 by the parser, four times the memory): Gather(words, expert index) reads only the
selected experts' bytes, then integer Mod/Div split the words into bytes, a 256-entry table turns each
byte into its two e2m1 values (or one e4m3 value), and the block scales (bytes too) multiply in. Same
values, bit for bit; 4.5 bits per NVFP4 weight read, only for the top-k experts. These expert GEMMs run
in the graph's float dtype (their activations still through the W4A4 quantize when the format has one).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from numerics.fp8 import E4M3_VALUES, FP8Tensor
from numerics.mxfp4 import FP4_PAIR_VALUES, MXFP4Weight
from numerics.nvfp4 import BLOCK as NV_BLOCK
from numerics.nvfp4 import NVFP4Tensor
from plugins.onnx.parts import TRT_DOMAIN

FLOAT = TensorProto.FLOAT


class QuantGraphError(ValueError):
    """A weight or scale that cannot be put into the graph as declared."""


# -- initializers --------------------------------------------------------------------------------------------
def fp4_initializer(packed: np.ndarray, shape: tuple[int, ...]) -> TensorProto:
    """Packed e2m1 bytes (low nibble = even element, ONNX's 4-bit packing too) -> FLOAT4E2M1 tensor."""
    t = TensorProto()
    t.data_type = TensorProto.FLOAT4E2M1
    t.dims.extend(shape)
    t.raw_data = np.ascontiguousarray(packed, dtype=np.uint8).tobytes()
    return t


def fp8_initializer(data: np.ndarray) -> TensorProto:
    """float8_e4m3fn array (or its bytes) -> FLOAT8E4M3FN tensor."""
    t = TensorProto()
    t.data_type = TensorProto.FLOAT8E4M3FN
    t.dims.extend(data.shape)
    t.raw_data = np.ascontiguousarray(data).view(np.uint8).tobytes()
    return t


def _f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).reshape(())


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
            raise QuantGraphError(
                f"{name}: {int(lossy.sum())} MXFP4 block(s) cannot be represented exactly in NVFP4, first at "
                f"block index {first} (axes {'expert, ' if lossy.ndim == 3 else ''}row, block of 32): its "
                f"exponent is more than 17 below the tensor's largest; TensorRT cannot take E8M0 scales, so "
                f"quantize this tensor to NVFP4 from its float weights (convert-checkpoint --to hf-nvfp4)")
        return mxfp4_to_nvfp4_lossless(weight.blocks, weight.scales)
    raise QuantGraphError(f"{name}: expected an NVFP4 (or MXFP4) weight, got {type(weight).__name__}; the "
                          f"network declares this module in an FP4 format")


def as_fp8(weight, name: str) -> FP8Tensor:
    if isinstance(weight, FP8Tensor):
        return weight
    raise QuantGraphError(f"{name}: the network declares this module 'fp8' but the checkpoint holds "
                          f"{type(weight).__name__}; expected numerics.fp8.FP8Tensor")


def input_scale_value(input_scale, name: str) -> np.float32:
    """The calibrated activation scale (per expert ones share their max, as the reference does)."""
    if input_scale is None:
        raise QuantGraphError(f"{name}: this format quantizes activations and needs the calibrated input_scale "
                              f"({name.removesuffix('.weight')}.input_scale), which the checkpoint lacks; "
                              f"build with calibration (--calib-file) or use a weight-only format")
    s = np.float32(np.max(np.asarray(input_scale, dtype=np.float32)))
    if not (np.isfinite(s) and s > 0):
        raise QuantGraphError(f"{name}: input_scale must be a finite positive number, got {s}")
    return s


# -- dequantized weights (all rows; the pattern TensorRT fuses into its GEMMs) -------------------------------
def _cast(g, x: str, dtype: int, name: str) -> str:
    return x if dtype == FLOAT else g.node("Cast", [x], name=f"{name}/cast", to=dtype)[0]


def emit_nvfp4_weight(g, w: NVFP4Tensor, name: str, dtype: int = FLOAT) -> str:
    """[..., out, in] dequantized: DQ(DQ(e4m3 block scales, global), FLOAT4E2M1 weight; block 16)."""
    codes = g.const(f"{name}/fp4", fp4_initializer(w.packed, w.shape))
    s8 = g.const(f"{name}/block_scale", fp8_initializer(w.block_scale))
    g2 = g.const(f"{name}/global_scale", _f32(w.global_scale))
    scale = g.node("DequantizeLinear", [s8, g2], name=f"{name}/dq_scale")[0]
    deq = g.node("DequantizeLinear", [codes, scale], name=f"{name}/dq", axis=-1, block_size=NV_BLOCK)[0]
    return _cast(g, deq, dtype, name)


def emit_fp8_weight(g, w: FP8Tensor, name: str, dtype: int = FLOAT) -> str:
    data = g.const(f"{name}/fp8", fp8_initializer(w.data))
    scale = g.const(f"{name}/scale", _f32(w.scale))
    return _cast(g, g.node("DequantizeLinear", [data, scale], name=f"{name}/dq")[0], dtype, name)


# -- activations ---------------------------------------------------------------------------------------------
def emit_nvfp4_activation(g, x: str, input_scale, name: str, dtype: int = FLOAT) -> str:
    """x -> NVFP4 fake-quantized x: TRT_FP4DynamicQuantize with the calibrated global scale, two DQs."""
    gs = g.const(f"{name}/input_scale", input_scale_value(input_scale, name))
    x_fp4, x_sf = g.node("TRT_FP4DynamicQuantize", [x, gs], 2, name=f"{name}/act_fp4", domain=TRT_DOMAIN,
                         axis=-1, block_size=NV_BLOCK, scale_type=TensorProto.FLOAT8E4M3FN)
    sf = g.node("DequantizeLinear", [x_sf, gs], name=f"{name}/act_dq_scale")[0]
    deq = g.node("DequantizeLinear", [x_fp4, sf], name=f"{name}/act_dq", axis=-1, block_size=NV_BLOCK)[0]
    return _cast(g, deq, dtype, f"{name}/act")


def emit_fp8_activation(g, x: str, input_scale, name: str, dtype: int = FLOAT) -> str:
    """x -> QuantizeLinear (e4m3, saturating) -> DequantizeLinear with the calibrated per-tensor scale.
    The scale takes x's dtype: TensorRT's strongly typed Q/DQ wants them to agree."""
    s = input_scale_value(input_scale, name)
    scale = g.const(f"{name}/input_scale", np.asarray(s, dtype=_NUMPY_DTYPE.get(dtype, np.float32)))
    zero = g.const(f"{name}/zero_point", fp8_initializer(np.zeros((), dtype=np.uint8)))
    q = g.node("QuantizeLinear", [x, scale, zero], name=f"{name}/act_q")[0]
    return g.node("DequantizeLinear", [q, scale], name=f"{name}/act_dq")[0]


_NUMPY_DTYPE = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def _no_activation(g, x, input_scale, name, dtype):
    return x


# format -> (weight value check, weight emitter, activation emitter)
_FORMATS = {
    "nvfp4": (as_nvfp4, emit_nvfp4_weight, emit_nvfp4_activation),
    "w4a16-nvfp4": (as_nvfp4, emit_nvfp4_weight, _no_activation),
    "mxfp4": (as_nvfp4, emit_nvfp4_weight, _no_activation),
    "fp8": (as_fp8, emit_fp8_weight, emit_fp8_activation),
}


def _format(quant: str, name: str):
    try:
        return _FORMATS[quant]
    except KeyError:
        raise QuantGraphError(f"{name}: no ONNX pattern for quant format {quant!r}; quantized formats with one: "
                              f"{', '.join(_FORMATS)} ('bf16' modules are plain MatMuls)") from None


QUANT_FORMATS_WITH_PATTERN = tuple(_FORMATS)


def emit_activation_quant(g, x: str, quant: str, input_scale, name: str, dtype: int = FLOAT) -> str:
    """What a format does to a GEMM's input (identity for weight-only formats)."""
    return _format(quant, name)[2](g, x, input_scale, name, dtype)


def emit_dequantized_weight(g, weight, quant: str, name: str, dtype: int = FLOAT) -> str:
    """The whole weight [..., out, in], dequantized in the graph from its quantized initializers."""
    check, emit_weight, _ = _format(quant, name)
    return emit_weight(g, check(weight, name), name, dtype)


def emit_quant_linear(g, x: str, weight, quant: str, name: str, *, input_scale=None, dtype: int = FLOAT) -> str:
    """y = act(x) @ deq(W).T for x [..., in], W [out, in] (no bias: the caller adds it)."""
    check, emit_weight, emit_act = _format(quant, name)
    w = emit_weight(g, check(weight, name), name, dtype)
    wt = g.node("Transpose", [w], name=f"{name}/transpose", perm=[1, 0])[0]
    xq = emit_act(g, x, input_scale, name, dtype)
    return g.node("MatMul", [xq, wt], name=f"{name}/matmul")[0]


# -- gatherable expert weights -------------------------------------------------------------------------------
_BYTE_SHIFTS = np.array([1, 1 << 8, 1 << 16, 1 << 24], dtype=np.int32)


def pack_words(b: np.ndarray) -> np.ndarray:
    """uint8 [..., n] -> int32 [..., ceil(n/4)], four bytes per word, little-endian (zero padded)."""
    b = np.ascontiguousarray(b, dtype=np.uint8)
    pad = (-b.shape[-1]) % 4
    if pad:
        b = np.concatenate([b, np.zeros(b.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return b.view("<i4").astype(np.int32)


def _emit_reshape_tail(g, x: str, like: str, drop: int, tail: list[int], name: str) -> str:
    """Reshape x to like.shape[:-drop] + tail (the leading dims are dynamic: the index's shape)."""
    lead = g.node("Shape", [like], name=f"{name}/shape", end=-drop)[0]
    target = g.node("Concat", [lead, g.const(f"{name}/tail", np.asarray(tail, np.int64))], name=f"{name}/target",
                    axis=0)[0]
    return g.node("Reshape", [x, target], name=f"{name}/reshape")[0]


def _emit_gathered_bytes(g, words: np.ndarray, n_bytes: int, index: str, name: str) -> str:
    """int32 word initializer [E, rows, W] -> the selected experts' bytes, int32 [*index, rows, n_bytes].
    Word -> bytes with floor Mod and exact Div (w - w mod d is a multiple of d), so negative words (top
    byte >= 128) split correctly whether the backend's integer division truncates or floors."""
    table = g.const(f"{name}/words", words)
    picked = g.node("Gather", [table, index], name=f"{name}/gather", axis=0)[0]         # [*I, rows, W]
    u = g.node("Unsqueeze", [picked, g.const(f"{name}/axis", np.array([-1], np.int64))], name=f"{name}/unsq")[0]
    d = g.const(f"{name}/byte_shift", _BYTE_SHIFTS)
    low = g.node("Mod", [u, d], name=f"{name}/mod", fmod=0)[0]
    shifted = g.node("Div", [g.node("Sub", [u, low], name=f"{name}/sub")[0], d], name=f"{name}/div")[0]
    byte = g.node("Mod", [shifted, g.const(f"{name}/c256", np.array(256, np.int32))], name=f"{name}/byte",
                  fmod=0)[0]                                                              # [*I, rows, W, 4]
    flat = _emit_reshape_tail(g, byte, picked, 1, [words.shape[-1] * 4], f"{name}/bytes")
    if words.shape[-1] * 4 != n_bytes:
        flat = g.node("Slice", [flat, g.const(f"{name}/start", np.array([0], np.int64)),
                                g.const(f"{name}/end", np.array([n_bytes], np.int64)),
                                g.const(f"{name}/slice_axis", np.array([-1], np.int64))], name=f"{name}/trim")[0]
    return flat


def emit_gathered_expert_weights(g, weight, quant: str, name: str, index: str, dtype: int = FLOAT) -> str:
    """Experts' weight [E, out, in] -> the selected ones, dequantized: [*index.shape, out, in].
    Only the selected experts' bytes are read (see the module docstring)."""
    check, _, _ = _format(quant, name)
    w = check(weight, name)
    if len(w.shape) != 3:
        raise QuantGraphError(f"{name}: expert weights must be [experts, out, in], got shape {w.shape}")
    _, out_f, in_f = w.shape
    if isinstance(w, NVFP4Tensor):
        code_bytes = _emit_gathered_bytes(g, pack_words(w.packed), in_f // 2, index, f"{name}/codes")
        pairs = g.node("Gather", [g.const(f"{name}/e2m1_pairs", FP4_PAIR_VALUES.astype(np.float32)), code_bytes],
                       name=f"{name}/decode", axis=0)[0]                           # [*I, out, in/2, 2]
        values = _emit_reshape_tail(g, pairs, code_bytes, 2, [out_f, in_f // NV_BLOCK, NV_BLOCK], f"{name}/blocks")
        s_bytes = _emit_gathered_bytes(g, pack_words(w.block_scale.view(np.uint8)), in_f // NV_BLOCK, index,
                                       f"{name}/scales")
        s = g.node("Gather", [g.const(f"{name}/e4m3", E4M3_VALUES), s_bytes], name=f"{name}/scale_decode",
                   axis=0)[0]
        s = g.node("Mul", [s, g.const(f"{name}/global_scale", _f32(w.global_scale))], name=f"{name}/scale")[0]
        s = g.node("Unsqueeze", [s, g.const(f"{name}/axis_s", np.array([-1], np.int64))], name=f"{name}/scale_b")[0]
        deq = g.node("Mul", [values, s], name=f"{name}/dequant")[0]
        deq = _emit_reshape_tail(g, deq, code_bytes, 2, [out_f, in_f], f"{name}/weight")
    else:
        data = _emit_gathered_bytes(g, pack_words(w.data.view(np.uint8)), in_f, index, f"{name}/codes")
        vals = g.node("Gather", [g.const(f"{name}/e4m3", E4M3_VALUES), data], name=f"{name}/decode", axis=0)[0]
        deq = g.node("Mul", [vals, g.const(f"{name}/scale", _f32(w.scale))], name=f"{name}/dequant")[0]
    return _cast(g, deq, dtype, name)
