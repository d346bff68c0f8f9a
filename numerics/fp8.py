"""FP8 e4m3 (float8_e4m3fn) with one float32 scale per tensor: weights and the KV-cache scale.

A value is float32(e4m3 code) * scale. Quantization: q = float32(x) / scale (a float32 division, as
ModelOpt's FP8QTensor and export do on float32 weights), clamped to [-448, 448] *before* the cast, then
rounded to nearest e4m3, ties to even. The clamp matters: ml_dtypes turns overflow into NaN, while torch
(>= 2.12) and the GPU (satfinite) saturate; clamping gives the saturating result everywhere. Signs of
zero are kept; NaN input stays NaN (0x7F/0xFF).

Scales: `fp8_scale(amax)` = float32(amax) / 448 (ModelOpt `amax / maxbound`), with two guards: an amax
of 0 gives 1.0 (ModelOpt's export likewise substitutes maxbound for a zero amax so that the scale stays
positive) and a positive amax below 448 * 2**-126 is floored at 2**-126. `fp8_kv_scale(amax)` is the
KV-cache scale TensorRT-LLM reads (`k_scale`/`v_scale`, kv_cache_scaling_factor): amax / 448, clamped
to at least 1.0 by default as ModelOpt's `get_kv_cache_scaling_factor(clamp_fp8_scales=True)` does.

Relation to ModelOpt `FP8QTensor.quantize(x)`: bit-identical data and scale for float32 input. For bf16
input ModelOpt computes amax / 448 and x / scale in bf16 (torch type promotion), so its scale is the
bf16 rounding of ours and its data is rounded twice; use float32 input to reproduce it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from numerics import _codec

E4M3 = ml_dtypes.float8_e4m3fn
E4M3_MAX = np.float32(448.0)
SCALE_FLOOR = np.float32(2.0 ** -126)
E4M3_CODEC = _codec.LutCast(3, _codec.clamp_cast_codes(E4M3, 448.0))
E4M3_VALUES = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32)


@dataclass(frozen=True)
class FP8Tensor:
    """data float8_e4m3fn [...], scale float32 (per tensor)."""

    data: np.ndarray
    scale: np.float32

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        return dequantize_fp8(self.data, self.scale, dtype=dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def fp8_scale(amax) -> np.float32:
    """Per-tensor e4m3 scale for a given amax: amax / 448 (0 -> 1.0, tiny -> 2**-126; NaN stays NaN)."""
    a = _codec.as_scalar(amax)
    if a == 0:
        return np.float32(1.0)
    return np.float32(np.maximum(a / E4M3_MAX, SCALE_FLOOR))


def fp8_kv_scale(amax, *, clamp_to_one: bool = True) -> np.float32:
    """KV-cache scale from the calibrated K (or V) amax: amax / 448, at least 1.0 unless clamp_to_one=False."""
    s = fp8_scale(amax)
    return np.float32(max(s, np.float32(1.0))) if clamp_to_one else s


def quantize_fp8_per_tensor(x, scale=None, *, chunk_rows: int | None = None,
                            workers: int | None = None) -> tuple[np.ndarray, np.float32]:
    """float array (numpy float32/float16/bfloat16 or torch) -> (float8_e4m3fn array, float32 scale).

    `scale=None` derives it from this tensor's amax with `fp8_scale`; a given scale must be finite and
    positive, and values beyond 448 * scale saturate. Chunked over rows of the [-1, last] view.
    """
    x = _codec.as_array(x)
    cols = x.shape[-1] if x.ndim else 1
    x2 = x.reshape(-1, cols)
    rows_per_chunk = _codec.pick_chunk_rows(chunk_rows, cols)
    if scale is None:
        amax = _codec.tensor_amax(x2, rows_per_chunk)
        if not np.isfinite(amax):
            raise ValueError("FP8: the input has NaN or inf, so no scale can be derived from it; "
                             "pass scale explicitly to quantize it anyway")
        s = fp8_scale(amax)
    else:
        s = _codec.as_scalar(scale)
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"FP8 scale must be a finite positive number, got {s}")
    out = np.empty(x2.shape, dtype=np.uint8)

    def work(r0: int, r1: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            q = _codec.to_f32(x2[r0:r1]) / s
        out[r0:r1] = E4M3_CODEC(q)

    _codec.run_chunks(work, x2.shape[0], rows_per_chunk, workers)
    return out.view(E4M3).reshape(x.shape), s


def quantize_fp8(x, scale=None, **kw) -> FP8Tensor:
    """`quantize_fp8_per_tensor` returning an FP8Tensor."""
    data, s = quantize_fp8_per_tensor(x, scale, **kw)
    return FP8Tensor(data, s)


def dequantize_fp8(data: np.ndarray, scale, dtype=np.float32) -> np.ndarray:
    """(float8_e4m3fn array or its uint8 bytes, scale) -> float32(data) * scale."""
    data = np.asarray(data)
    if data.dtype not in (np.dtype(np.uint8), np.dtype(E4M3)):
        raise TypeError(f"expected float8_e4m3fn data (or its uint8 bytes), got {data.dtype}")
    out = E4M3_VALUES[data.view(np.uint8)]
    out *= _codec.as_scalar(scale)
    return out if np.dtype(dtype) == np.float32 else out.astype(dtype)
