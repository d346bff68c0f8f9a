"""MXFP4 -> NVFP4 without requantizing: the released gpt-oss experts, exactly, in NVFP4.

An MXFP4 block of 32 (codes c_i, scale 2**k_j) splits into two NVFP4 blocks of 16 with the same codes.
With the global scale 2**m, m = k_max - 8 (k_max = the largest exponent among scale bytes > 0), the block
scale 2**(k_j - m) lies in [2**-9, 2**8] and is exact in e4m3 whenever k_max - k_j <= 17; then every
value e2m1(c_i) * 2**k_j is reproduced exactly. This is ModelOpt's closed form
(`quantize_mxfp4_to_nvfp4_lossless`, modelopt/torch/export/shard_cast_utils.py, with the per-block amax
of modelopt/torch/quantization/utils/numeric_utils.py), computed here on the bytes: codes are copied,
not re-rounded.

Differences from ModelOpt:
- `negative_zero="modelopt"` (default) rewrites the nibble -0 (code 8) as +0, which is what ModelOpt's
  dequantize-then-quantize produces; with "keep" the packed bytes are the MXFP4 bytes verbatim. Both
  dequantize to the same values.
- A block that cannot be exact (k_max - k_j > 17 and any nonzero code) is an error here, naming how many;
  ModelOpt counts it and requantizes it silently. `allow_lossy=True` requantizes those blocks exactly as
  ModelOpt does (block amax = largest code magnitude * 2**k_j, scale clamped to [2**-9, 448]). ModelOpt
  also counts a block with scale byte 0 as lossless whatever its codes; we count it by its content.
- Exponents k_j >= 126 (scale bytes >= 253, far outside real weights): ModelOpt's 6 * 2**k_j
  overflows float32 and its block scale saturates at 448; ours stays exact.
Everything else, bytes and scales, is identical (tests/numerics/test_quant_oracles.py).
"""

from __future__ import annotations

import numpy as np

from numerics import nvfp4
from numerics.mxfp4 import BLOCK as MX_BLOCK
from numerics.mxfp4 import E8M0_BIAS, FP4_VALUES, dequantize_mxfp4

E4M3_KMAX = 8
E4M3_KMIN = -9
MAX_EXACT_SPAN = E4M3_KMAX - E4M3_KMIN  # 17
NEGATIVE_ZERO = ("modelopt", "keep")

_BYTES = np.arange(256, dtype=np.uint8)
# byte -> larger magnitude index (0..7) of its two nibbles
_MAX_MAG = np.maximum(_BYTES & 0x07, (_BYTES >> 4) & 0x07).astype(np.uint8)


class LossyTranscodeError(ValueError):
    """Some MXFP4 blocks are too small relative to the largest one for an exact NVFP4 block scale."""


def _check(blocks: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blocks = np.asarray(blocks)
    scales = np.asarray(scales)
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise TypeError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != MX_BLOCK // 2 or scales.ndim == 0:
        raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape} do not pair up: "
                         f"expected blocks [..., rows, n, 16] with scales [..., rows, n]")
    if (scales == 255).any():
        raise ValueError("MXFP4 scales contain 255 (e8m0 NaN); nothing to transcode exactly")
    return blocks, scales


def mxfp4_kmax(scales: np.ndarray) -> int:
    """Largest unbiased exponent among scale bytes > 0 (0 when there is none), as ModelOpt computes it.
    Take the max over everything that must share one NVFP4 global scale (all experts of a projection,
    gate and up when fused)."""
    s = np.asarray(scales)
    nz = s[s > 0]
    return int(nz.max()) - E8M0_BIAS if nz.size else 0


_NIBBLE_BIT0 = np.uint64(0x1111111111111111)


def _drop_negative_zero(b: np.ndarray) -> np.ndarray:
    """Bytes (size a multiple of 8) with every -0 nibble (code 8) turned into +0 (code 0).

    16 nibbles at a time, in cache-sized pieces: bit 0 of each nibble of `mag` is the OR of that
    nibble's magnitude bits, and the sign bit is cleared where it is set and the magnitude is 0."""
    out = np.array(b, dtype=np.uint8, order="C", copy=True)
    w = out.reshape(-1).view(np.uint64)
    one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
    for i in range(0, w.size, 1 << 15):
        c = w[i:i + (1 << 15)]
        mag = c | (c >> one)
        mag |= c >> two
        np.invert(mag, out=mag)
        mag &= c >> three
        mag &= _NIBBLE_BIT0
        mag <<= three
        c ^= mag
    return out


def _nonzero_blocks(blocks: np.ndarray) -> np.ndarray:
    return (blocks & 0x77).any(axis=-1)


def lossy_blocks(blocks: np.ndarray, scales: np.ndarray, k_max: int | None = None) -> np.ndarray:
    """bool [..., rows, n]: MXFP4 blocks NVFP4 cannot hold exactly under the global scale 2**(k_max-8)."""
    blocks, scales = _check(blocks, scales)
    k_max = mxfp4_kmax(scales) if k_max is None else int(k_max)
    k = scales.astype(np.int32) - E8M0_BIAS
    out = k_max - k > MAX_EXACT_SPAN
    if out.any():
        out[out] = _nonzero_blocks(blocks[out])
    return out


def mxfp4_to_nvfp4_lossless(blocks: np.ndarray, scales: np.ndarray, *, k_max: int | None = None,
                            allow_lossy: bool = False, negative_zero: str = "modelopt") -> nvfp4.NVFP4Tensor:
    """MXFP4 (blocks uint8 [..., rows, n, 16], scales uint8 [..., rows, n]) -> NVFP4Tensor of shape
    [..., rows, 32n]: packed [..., rows, 16n], e4m3 block scales [..., rows, 2n], global 2**(k_max-8).

    `k_max` defaults to `mxfp4_kmax(scales)`; pass a larger shared one to give several tensors one
    global scale. Raises LossyTranscodeError if any block would lose precision, unless `allow_lossy`.
    """
    if negative_zero not in NEGATIVE_ZERO:
        raise ValueError(f"negative_zero must be one of {NEGATIVE_ZERO}, got {negative_zero!r}")
    blocks, scales = _check(blocks, scales)
    k_local = mxfp4_kmax(scales)
    k_max = k_local if k_max is None else int(k_max)
    if k_max < k_local:
        raise ValueError(f"k_max={k_max} is below this tensor's own largest exponent {k_local}")
    m = k_max - E4M3_KMAX
    g = np.float32(np.ldexp(np.float32(1.0), m))

    k = scales.astype(np.int32) - E8M0_BIAS
    lossy = lossy_blocks(blocks, scales, k_max)
    n_lossy = int(lossy.sum())
    if n_lossy and not allow_lossy:
        worst = int(k[lossy].min())
        raise LossyTranscodeError(
            f"{n_lossy} of {lossy.size} MXFP4 blocks cannot be represented exactly in NVFP4: their "
            f"exponent is more than {MAX_EXACT_SPAN} below k_max={k_max} (smallest {worst}), beyond what an "
            f"e4m3 block scale under the global scale 2**{m} reaches. Pass allow_lossy=True to requantize "
            f"them as ModelOpt does.")

    # Per-block scale, ModelOpt's rule: amax_j / (6 g) with amax_j = 6 * 2**k_j where that closed form
    # is in e4m3's window (judged with this tensor's own k_max, as ModelOpt does), else the largest
    # code magnitude * 2**k_j; then clamped to [2**-9, 448].
    # (6 * 2**k_j) / (6 * 2**m) is computed as 2**(k_j - m) directly, which only differs from ModelOpt
    # for k_j >= 126, where its 6 * 2**k_j overflows float32.
    delta = k - (k_local - E4M3_KMAX)
    in_range = (delta >= E4M3_KMIN) & (delta <= E4M3_KMAX)
    s = np.ldexp(np.float32(1.0), np.maximum(k - m, -149)).astype(np.float32)
    if not in_range.all():
        max_mag = _MAX_MAG[blocks].max(axis=-1)
        pow2k = np.ldexp(np.float32(1.0), k).astype(np.float32)
        data_derived = (FP4_VALUES[max_mag] * pow2k) / (nvfp4.E2M1_MAX * g)
        s = np.where(in_range, s, data_derived).astype(np.float32)
    np.clip(s, nvfp4.E4M3_MIN_SUBNORMAL, nvfp4.E4M3_MAX, out=s)
    s8 = np.repeat(s.astype(nvfp4.E4M3), 2, axis=-1)           # [..., rows, 2n]

    packed = _drop_negative_zero(blocks) if negative_zero == "modelopt" else np.array(blocks, copy=True)
    if n_lossy:
        lb = blocks[lossy]                                         # [L, 16]
        values = dequantize_mxfp4(lb[:, None, :], scales[lossy][:, None])   # [L, 32], exact
        lossy_s8 = s8.reshape(lossy.shape + (2,))[lossy]           # [L, 2]
        packed[lossy] = nvfp4.quantize_nvfp4_with_scales(values, lossy_s8, g)

    rows_shape = scales.shape[:-1]
    n = scales.shape[-1]
    return nvfp4.NVFP4Tensor(packed.reshape(rows_shape + (n * MX_BLOCK // 2,)), s8, g,
                             rows_shape + (n * MX_BLOCK,))
