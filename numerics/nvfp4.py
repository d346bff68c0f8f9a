"""NVFP4: e2m1 values, one float8 e4m3 scale per block of 16, one float32 scale per tensor.

Layout (what ModelOpt's HF export and TensorRT-LLM load): `packed` uint8 [..., K/2] (low nibble = even
element), `block_scale` float8_e4m3fn [..., K/16] (`.view(np.uint8)` for the bytes; ModelOpt's
`weight_scale`), `global_scale` float32 (ModelOpt's `weight_scale_2`). A value is
e2m1(code) * float32(block_scale) * global_scale.

Quantization recipes (`recipe=`), all float32 arithmetic (inputs are widened to float32 exactly):
  "modelopt" (default) -- bit for bit `NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=g)`
      (nvidia-modelopt 0.47, modelopt/torch/quantization/qtensor/nvfp4_tensor.py):
        s_j  = amax_j / float32(6 * g); where that is 0 (all-zero block, or underflow) s_j = 1.0;
        s_j  = e4m3(clamp(s_j, 2**-9, 448))          round half to even, no overflow to NaN
        q    = x / (float32(s_j) * g)                 a true division, as ModelOpt does
        code = e2m1(q): round half to even, saturating at +-6; sign bit set iff q < 0, so -0.0 gives
               +0 (code 0) while negative values that round to zero give -0 (code 8); NaN gives code 7.
  "torchao" -- bit for bit torchao `nvfp4_quantize(x, 16, per_tensor_scale=g)` (torchao 0.18,
      prototype/mx_formats/nvfp4_tensor.py); its single-level mode (per_tensor_scale=None) is g = 1.0:
        s_j  = e4m3(clamp((amax_j / 6) / g, 2**-6, 448))   (smallest normal e4m3, no zero-block rule)
        q    = x * ((1 / g) / float32(s_j))            a multiplication by the reciprocal
        code = e2m1(clamp(q, -6, 6)), round half to even, signs of zero kept (-0.0 gives code 8).
      Where (1 / g) / s overflows float32 (g * s < 2**-128, e.g. global scales near the float32
      floor) torchao would multiply by inf; we divide by (s * g) instead.
On N(0, 0.02) float32 weights the two recipes gave identical scales and differed on 0.17 codes per
million (a division and a reciprocal multiply round differently next to e2m1 ties; none on bf16 data);
they differ more on zero and tiny blocks (block scale 1.0 or 2**-9 vs 2**-6).

Global scale: `nvfp4_global_scale(amax)` = float32(amax) / float32(6 * 448), ModelOpt's and torchao's
formula, floored at 2**-126 (the smallest normal float32). Only tensors with amax < 6 * 448 * 2**-126
(about 3.2e-35) see the floor: for an all-zero tensor ModelOpt's scale is 0 and every block scale NaN,
ours quantizes to zeros with finite scales.

NaN and inf: a NaN element makes its block's amax and scale NaN (the other elements of the block then
encode as NaN does), as in ModelOpt. With `global_scale=None` a non-finite input is rejected, since the
global scale would be non-finite. Finite inputs never give NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import ml_dtypes
import numpy as np

from numerics import _codec
from numerics.mxfp4 import E2M1, FP4_PAIR_VALUES, FP4_VALUES

BLOCK = 16
E2M1_MAX = np.float32(6.0)
E4M3_MAX = np.float32(448.0)
E4M3_MIN_SUBNORMAL = np.float32(2.0 ** -9)
E4M3_MIN_NORMAL = np.float32(2.0 ** -6)
GLOBAL_SCALE_FLOOR = np.float32(2.0 ** -126)
RECIPES = ("modelopt", "torchao")
E4M3 = ml_dtypes.float8_e4m3fn


def _modelopt_nv_codes(v: np.ndarray) -> np.ndarray:
    """ModelOpt NVFP4QTensor._cast_fp4: RNE magnitude (searchsorted on the midpoints plus the odd-tie
    fix), sign bit = (v < 0); NaN sorts past every bound, so it gets magnitude 7 and no sign."""
    mag = np.clip(np.abs(v), 0, 6).astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0x07
    mag = np.where(np.isnan(v), 7, mag)
    return (mag | np.where(v < 0, 8, 0)).astype(np.uint8)


E2M1_MODELOPT_NV = _codec.LutCast(1, _modelopt_nv_codes)


@dataclass(frozen=True)
class NVFP4Tensor:
    """packed uint8 [..., K/2], block_scale float8_e4m3fn [..., K/16], global_scale float32, shape [..., K]."""

    packed: np.ndarray
    block_scale: np.ndarray
    global_scale: np.float32
    shape: tuple[int, ...]

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        return dequantize_nvfp4(self.packed, self.block_scale, self.global_scale, dtype=dtype)

    @property
    def weight_scale_2(self) -> np.float32:
        """ModelOpt's name for the global scale."""
        return self.global_scale


def nvfp4_global_scale(amax) -> np.float32:
    """Per-tensor scale float32(amax) / float32(2688), floored at 2**-126 (see the module docstring)."""
    g = _codec.as_scalar(amax) / np.float32(6.0 * 448.0)
    return np.float32(np.maximum(g, GLOBAL_SCALE_FLOOR))  # NaN stays NaN


def _check_global_scale(g) -> np.float32:
    g = np.float32(_codec.as_scalar(g))
    if not (np.isfinite(g) and g > 0):
        raise ValueError(f"NVFP4 global scale must be a finite positive number, got {g}")
    return g


def _block_scales(amax: np.ndarray, g: np.float32, recipe: str) -> np.ndarray:
    """float32 block amax -> e4m3 block scales."""
    with np.errstate(invalid="ignore"):
        if recipe == "modelopt":
            s = amax / (E2M1_MAX * g)
            s[s == 0] = 1.0
            np.clip(s, E4M3_MIN_SUBNORMAL, E4M3_MAX, out=s)
        else:
            s = (amax / E2M1_MAX) / g
            np.clip(s, E4M3_MIN_NORMAL, E4M3_MAX, out=s)
    return s.astype(E4M3)


def _encode(xf: np.ndarray, s8: np.ndarray, g: np.float32, recipe: str) -> np.ndarray:
    """float32 [r, K] with e4m3 block scales [r, K/16] -> packed [r, K/2]."""
    r, k = xf.shape
    sf = s8.astype(np.float32)
    xb = xf.reshape(r, k // BLOCK, BLOCK)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if recipe == "modelopt":
            q = xb / (sf * g)[..., None]
            codes = E2M1_MODELOPT_NV(q)
        else:
            recip = (np.float32(1.0) / g) / sf
            q = xb * recip[..., None]
            bad = ~np.isfinite(recip)  # g * s < 2**-128: torchao would multiply by inf; divide instead
            if bad.any():
                q[bad] = xb[bad] / (sf[bad] * g)[..., None]
            codes = E2M1(q)
    return _codec.pack_codes(codes.reshape(r, k))


def _prepare(x, recipe: str):
    if recipe not in RECIPES:
        raise ValueError(f"unknown NVFP4 recipe {recipe!r}; choose one of {RECIPES}")
    x = _codec.as_array(x)
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {x.shape}")
    return x, x.reshape(-1, x.shape[-1])


def _resolve_global_scale(x2: np.ndarray, global_scale, chunk_rows: int) -> np.float32:
    if global_scale is not None:
        return _check_global_scale(global_scale)
    amax = _codec.tensor_amax(x2, chunk_rows)
    if not np.isfinite(amax):
        raise ValueError("NVFP4: the input has NaN or inf, so no global scale can be derived from it; "
                         "pass global_scale explicitly to quantize it anyway")
    return nvfp4_global_scale(amax)


def quantize_nvfp4(x, global_scale=None, *, recipe: str = "modelopt", chunk_rows: int | None = None,
                   workers: int | None = None) -> NVFP4Tensor:
    """float array [..., K] (K % 16 == 0) -> NVFP4Tensor.

    `x`: numpy float32/float16/bfloat16 (ml_dtypes) or a torch tensor. `global_scale`: ModelOpt's
    weight_scale_2; None derives it from this tensor's amax (pass a shared one for q/k/v or for all
    experts of a projection). Processed in chunks of `chunk_rows` rows of the [-1, K] view on up to
    `workers` threads; the result does not depend on either.
    """
    x, x2 = _prepare(x, recipe)
    k = x.shape[-1]
    rows_per_chunk = _codec.pick_chunk_rows(chunk_rows, k)
    g = _resolve_global_scale(x2, global_scale, rows_per_chunk)
    packed = np.empty((x2.shape[0], k // 2), dtype=np.uint8)
    scales = np.empty((x2.shape[0], k // BLOCK), dtype=E4M3)

    def work(r0: int, r1: int) -> None:
        xf = _codec.to_f32(x2[r0:r1])
        amax = _codec.block_amax(_codec.f32_bits_abs(xf), BLOCK)
        s8 = _block_scales(amax, g, recipe)
        scales[r0:r1] = s8
        packed[r0:r1] = _encode(xf, s8, g, recipe)

    _codec.run_chunks(work, x2.shape[0], rows_per_chunk, workers)
    return NVFP4Tensor(packed.reshape(x.shape[:-1] + (k // 2,)), scales.reshape(x.shape[:-1] + (k // BLOCK,)),
                       g, tuple(x.shape))


def iter_quantize_nvfp4(x, global_scale=None, *, recipe: str = "modelopt",
                        chunk_rows: int | None = None) -> Iterator[tuple[slice, NVFP4Tensor]]:
    """Streaming form of `quantize_nvfp4`: yields (rows, part) with `rows` a slice of the flattened
    [-1, K] rows and `part` their NVFP4Tensor ([n, K/2] packed), so a caller can write a huge tensor
    out piece by piece. Concatenating the parts gives exactly `quantize_nvfp4(x, ...)`."""
    x, x2 = _prepare(x, recipe)
    k = x.shape[-1]
    rows_per_chunk = _codec.pick_chunk_rows(chunk_rows, k)
    g = _resolve_global_scale(x2, global_scale, rows_per_chunk)
    for r0 in range(0, x2.shape[0], rows_per_chunk):
        r1 = min(x2.shape[0], r0 + rows_per_chunk)
        xf = _codec.to_f32(x2[r0:r1])
        s8 = _block_scales(_codec.block_amax(_codec.f32_bits_abs(xf), BLOCK), g, recipe)
        yield slice(r0, r1), NVFP4Tensor(_encode(xf, s8, g, recipe), s8, g, (r1 - r0, k))


def quantize_nvfp4_with_scales(x, block_scale, global_scale, *, recipe: str = "modelopt") -> np.ndarray:
    """Encode x with given block scales (ModelOpt's `weights_scaling_factor=`): -> packed uint8."""
    x, x2 = _prepare(x, recipe)
    s8 = np.asarray(block_scale)
    s8 = s8.view(E4M3) if s8.dtype == np.uint8 else s8.astype(E4M3)
    s8 = s8.reshape(x2.shape[0], x2.shape[1] // BLOCK)
    packed = _encode(_codec.to_f32(x2), s8, _check_global_scale(global_scale), recipe)
    return packed.reshape(x.shape[:-1] + (x.shape[-1] // 2,))


def dequantize_nvfp4(packed: np.ndarray, block_scale: np.ndarray, global_scale, dtype=np.float32) -> np.ndarray:
    """(packed [..., K/2], block_scale e4m3 (or its uint8 bytes) [..., K/16], global_scale) -> [..., K].

    Computed as ModelOpt does: e2m1(code) * (float32(block_scale) * global_scale), in float32."""
    packed = np.asarray(packed)
    s8 = np.asarray(block_scale)
    s8 = s8.view(E4M3) if s8.dtype == np.uint8 else s8
    if packed.shape[:-1] != s8.shape[:-1] or packed.shape[-1] * 2 != s8.shape[-1] * BLOCK:
        raise ValueError(f"NVFP4 packed {packed.shape} and block scales {s8.shape} do not pair up: "
                         f"expected packed [..., K/2] with scales [..., K/16]")
    g = np.float32(_codec.as_scalar(global_scale))
    values = FP4_PAIR_VALUES[packed.astype(np.uint8)].reshape(s8.shape + (BLOCK,))
    values *= (s8.astype(np.float32) * g)[..., None]
    out = values.reshape(packed.shape[:-1] + (packed.shape[-1] * 2,))
    return out if np.dtype(dtype) == np.float32 else out.astype(dtype)


def fake_quantize_nvfp4_activations(x, input_scale, *, chunk_rows: int | None = None,
                                    workers: int | None = None) -> np.ndarray:
    """W4A4 emulation: what TensorRT-LLM's NVFP4 linear does to its input, returned dequantized (float32).

    `input_scale` is the checkpoint's calibrated activation scale, amax / (6 * 448) (ModelOpt export).
    TensorRT-LLM loads it as SFScale = 1 / input_scale (tensorrt_llm/_torch/modules/linear.py,
    NVFP4LinearMethod.load_weight_scales) and quantizes each block of 16 dynamically in
    cvt_warp_fp16_to_fp4 (cpp/tensorrt_llm/kernels/quantization.cuh):
        SF      = SFScale * (amax_j * (1/6));  sf8 = e4m3(SF), saturating (satfinite), round to nearest
        scale   = SF != 0 ? 1 / (float(sf8) * (1 / SFScale)) : 0
        code    = e2m1(x * scale), round to nearest even, saturating (cvt.rn.satfinite.e2m1x2.f32)
    and the GEMM multiplies by alpha = input_scale * weight_scale_2, so the activation it sees is
    e2m1(code) * float(sf8) * input_scale, which is what this returns. Block scales are dynamic; only
    the global scale is calibrated. Differences from the GPU: the kernel's reciprocals are
    rcp.approx.ftz (we divide exactly, so a code can differ where x * scale is within an ulp of an
    e2m1 rounding threshold), and a block whose SF is nonzero but rounds to e4m3 zero gives zeros here
    (on the GPU its codes are garbage times a zero scale, also zero unless x is inf/NaN). Where the
    reciprocal overflows (float(sf8) * input_scale < 2**-128; the GPU's ftz would make it inf) we
    divide instead.
    Activations above the calibrated amax saturate at sf8 = 448 and then at e2m1 6.
    """
    x = _codec.as_array(x)
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {x.shape}")
    in_scale = _check_global_scale(input_scale)
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    out = np.empty(x2.shape, dtype=np.float32)

    def work(r0: int, r1: int) -> None:
        codes, sf8 = quantize_nvfp4_activations(x2[r0:r1], in_scale)
        vals = FP4_VALUES[codes].reshape(r1 - r0, k // BLOCK, BLOCK)
        vals *= (sf8.astype(np.float32) * in_scale)[..., None]
        out[r0:r1] = vals.reshape(r1 - r0, k)

    _codec.run_chunks(work, x2.shape[0], _codec.pick_chunk_rows(chunk_rows, k), workers)
    return out.reshape(x.shape)


def quantize_nvfp4_activations(x, input_scale) -> tuple[np.ndarray, np.ndarray]:
    """The codes and block scales behind `fake_quantize_nvfp4_activations` (same arithmetic, one pass):
    x [..., K] -> (e2m1 codes uint8 [..., K], one per element, unpacked; e4m3 block scales [..., K/16]).
    `FP4_VALUES[codes] * (float32(sf8) * input_scale)` per block is the fake-quantized activation,
    bit for bit. This is what a dynamic-quantize graph op (TensorRT's TRT_FP4DynamicQuantize) outputs."""
    x = _codec.as_array(x)
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise ValueError(f"NVFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {x.shape}")
    in_scale = _check_global_scale(input_scale)
    sf_scale = np.float32(1.0) / in_scale
    inv_sf_scale = np.float32(1.0) / sf_scale
    k = x.shape[-1]
    xf = _codec.to_f32(x.reshape(-1, k))
    amax = _codec.block_amax(_codec.f32_bits_abs(xf), BLOCK)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sf = sf_scale * (amax * (np.float32(1.0) / E2M1_MAX))
        sf8 = np.minimum(sf, E4M3_MAX).astype(E4M3)
        sf8f = sf8.astype(np.float32)
        denom = sf8f * inv_sf_scale
        scale = np.where(sf8f != 0, np.float32(1.0) / denom, np.float32(0.0)).astype(np.float32)
        xb = xf.reshape(-1, k // BLOCK, BLOCK)
        q = xb * scale[..., None]
        bad = ~np.isfinite(scale)
        if bad.any():
            q[bad] = xb[bad] / denom[bad][..., None]
        codes = E2M1(q)
    return codes.reshape(x.shape), sf8.reshape(x.shape[:-1] + (k // BLOCK,))
