"""MXFP4 (OCP microscaling): e2m1 values, one e8m0 power-of-two scale per block of 32.

Storage matches what gpt-oss ships: `blocks` uint8 [..., rows, cols/32, 16] with two e2m1 codes per byte
(low nibble = even element), `scales` uint8 [..., rows, cols/32] holding the biased exponent
(value = LUT[code] * 2**(scale - 127)).

Scale rules (`rule=`; pick one explicitly, they differ on about half of all blocks). amax is the block's
max |x| in float32, the exponent e is clamped to [-127, 127] and stored as e + 127:
  "floor":    OCP MX spec v1.0 / torchao ScaleCalculationMode.FLOOR: e = floor(log2(amax)) - 2, read
              from the float32 exponent bits (fp32-subnormal or zero amax -> -127). Values that land
              above 6 after scaling saturate to +-6.
  "rceil":    torchao RCEIL, the Blackwell `cvt.rp.satfinite.ue8m0x2.f32` rule: e = ceil(log2(d)) with
              d = float32(amax / 6), computed exactly from the bits of d (no log2 rounding). Nothing
              saturates except when d itself rounded down onto a power of two. Zero blocks -> -127.
  "modelopt": NVIDIA ModelOpt `MXFP4QTensor.quantize`, reproduced bit for bit: RCEIL but with
              e = ceil(float32 log2(d)) (float32 log2 rounds d within a few ulps above 2^k down onto k),
              e2m1 ties rounded toward zero (0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3), and every exact zero
              encoded as -0 (code 8), while positive values that round to zero give +0.
Elements are scaled by 2**-e (exact: a power of two) and rounded to nearest e2m1, ties to even
("floor", "rceil"), saturating at +-6. Signs of zero are kept (-0.0 and negative values that round to
zero give code 8). NaN in a block: e is clamped as for inf and NaN elements encode as -0 (code 8);
"no NaN out of finite input" is what the tests hold.

Relation to torchao `to_mx(..., torch.float4_e2m1fn_x2, 32, mode)` (checked in tests/numerics/test_quant_oracles.py):
identical scales everywhere and identical codes in every block whose scale byte is not 0 (amax >=
2**-124 for FLOOR, amax > 6 * 2**-127 for RCEIL). In scale-byte-0 blocks torchao scales the data by
2**126 (FLOOR, the float32 scale is clamped to the smallest normal) or by 1 (RCEIL), which does not match
its own stored scale 2**-127; we scale by 2**127 so that dequantization gives back the data. torchao's
RCEIL also takes a float32 log2, so it agrees with our "rceil" except on blocks whose amax/6 sits a few
ulps above a power of two (where it equals our "modelopt" exponent).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from numerics import _codec

BLOCK = 32
E8M0_BIAS = 127
# e2m1 code -> value. Codes 8..15 are the negatives of 0..7 (sign bit 3); code 8 is -0.
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)
SCALE_RULES = ("floor", "rceil", "modelopt")
# byte -> (value of low nibble, value of high nibble): dequantization is one gather per byte.
FP4_PAIR_VALUES = np.stack([FP4_VALUES[np.arange(256) & 0x0F], FP4_VALUES[np.arange(256) >> 4]], axis=-1)
# e8m0 byte -> 2**(byte - 127) as float32 (byte 0 is the subnormal 2**-127, 255 is NaN).
E8M0_VALUES = np.ldexp(np.float32(1.0), np.arange(255, dtype=np.int32) - E8M0_BIAS).astype(np.float32)
E8M0_VALUES = np.append(E8M0_VALUES, np.float32(np.nan))
# e2m1 rounding as thresholds, the one definition of it (E2M1 below; the ONNX graphs' CPU lowering counts the
# same thresholds in standard ops): the magnitude code (0..7) of |v| is the number of midpoints E2M1_BOUNDS[i]
# (between magnitude codes i and i + 1) that |v| passes, where |v| passes a midpoint it lies above, or on when
# E2M1_TIES_UP[i] (i odd: the tie goes to the even code i + 1). That is nearest, ties to even, saturating at 6.
E2M1_BOUNDS = (FP4_VALUES[:7] + FP4_VALUES[1:8]) / np.float32(2)
E2M1_TIES_UP = np.arange(7) % 2 == 1


def e2m1_magnitude_codes(mag: np.ndarray) -> np.ndarray:
    """|v| (float32, not NaN) -> e2m1 magnitude codes 0..7, nearest with ties to even, saturating."""
    m = np.asarray(mag)[..., None]
    return np.where(E2M1_TIES_UP, m >= E2M1_BOUNDS, m > E2M1_BOUNDS).sum(axis=-1).astype(np.uint8)


def _rne_codes(v: np.ndarray) -> np.ndarray:
    """e2m1 codes, nearest with ties to even, saturating at +-6, the sign bit from v's (so -0.0 and negative
    values that round to zero give code 8). NaN, which e2m1 cannot hold, gives the zero of the opposite sign
    (code 8 for a NaN with its sign bit clear), as ml_dtypes' float4_e2m1fn cast does."""
    with np.errstate(invalid="ignore"):
        sign = np.signbit(v) ^ np.isnan(v)
        return e2m1_magnitude_codes(np.abs(v)) | np.where(sign, 8, 0).astype(np.uint8)


def _modelopt_mx_codes(v: np.ndarray) -> np.ndarray:
    """ModelOpt MXFP4QTensor cast_fp4: magnitude = #bounds strictly below |v| (ties toward zero),
    sign bit from sign(v) with sign(0) counted as negative."""
    mag = (np.abs(v)[..., None] > E2M1_BOUNDS).sum(axis=-1).astype(np.uint8)
    return np.where(v > 0, mag, mag | 8).astype(np.uint8)


E2M1 = _codec.LutCast(1, _rne_codes)
E2M1_MODELOPT_MX = _codec.LutCast(1, _modelopt_mx_codes)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [..., 2n] -> bytes [..., n], low nibble = even element."""
    codes = np.asarray(codes).astype(np.uint8)
    return (codes[..., 0::2] & 0x0F) | ((codes[..., 1::2] & 0x0F) << 4)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """bytes [..., n] -> uint8 codes [..., 2n]."""
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def fp4_codes(x: np.ndarray) -> np.ndarray:
    """float32 values already scaled into e2m1 range -> e2m1 codes (round-half-even, saturating at 6,
    sign of zero kept; identical to an ml_dtypes float4_e2m1fn cast, faster)."""
    return E2M1(np.asarray(x, dtype=np.float32))


def _block_exponents(amax: np.ndarray, rule: str) -> np.ndarray:
    """float32 block amax -> unbiased scale exponent (int32), clamped to [-127, 127]."""
    if rule == "floor":
        # The exponent bits of amax are floor(log2(amax)) for normal floats; zero and fp32 subnormals
        # read as -127 and end at the clamp below, as in torchao.
        exp = ((amax.view(np.int32) >> 23) & 0xFF).astype(np.int32) - 127 - 2
    elif rule == "rceil":
        d = amax / np.float32(6.0)
        mant, exp = np.frexp(d)  # d = mant * 2**exp, mant in [0.5, 1): ceil(log2 d) = exp, or exp-1 on 2^k
        exp = exp.astype(np.int32) - (mant == 0.5)
        exp = np.where(d > 0, exp, -127)
        exp = np.where(np.isfinite(d), exp, 127)
    elif rule == "modelopt":
        d = amax / np.float32(6.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            # float32 log2 as ModelOpt/torch computes it: the correctly rounded float32 of log2(d).
            log2 = np.log2(d.astype(np.float64)).astype(np.float32)
            exp = np.ceil(np.maximum(log2, np.float32(-127)))
        exp = np.where(np.isnan(exp), 127, exp).astype(np.int32)
    else:
        raise ValueError(f"unknown MXFP4 scale rule {rule!r}; choose one of {SCALE_RULES}")
    return np.clip(exp, -127, 127).astype(np.int32)


def quantize_mxfp4(x, rule: str = "floor", *, chunk_rows: int | None = None,
                   workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float array [..., rows, cols] (cols % 32 == 0) -> (blocks [..., rows, cols/32, 16], scales).

    `x`: numpy float32/float16/bfloat16 (ml_dtypes) or a torch tensor; converted to float32 exactly,
    one row chunk at a time (`chunk_rows` rows of the flattened [-1, cols] view; extra memory is a few
    chunks, whatever the tensor size). Results do not depend on `chunk_rows` or `workers`.
    """
    if rule not in SCALE_RULES:
        raise ValueError(f"unknown MXFP4 scale rule {rule!r}; choose one of {SCALE_RULES}")
    x = _codec.as_array(x)
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {x.shape}")
    cols = x.shape[-1]
    nb = cols // BLOCK
    x2 = x.reshape(-1, cols)
    blocks = np.empty((x2.shape[0], nb, BLOCK // 2), dtype=np.uint8)
    scales = np.empty((x2.shape[0], nb), dtype=np.uint8)
    encode = E2M1_MODELOPT_MX if rule == "modelopt" else E2M1

    def work(r0: int, r1: int) -> None:
        xf = _codec.to_f32(x2[r0:r1]).reshape(r1 - r0, nb, BLOCK)
        amax = _codec.block_amax(_codec.f32_bits_abs(xf).reshape(r1 - r0, cols), BLOCK)
        exp = _block_exponents(amax, rule)
        factor = E8M0_VALUES[E8M0_BIAS - exp]  # 2**-exp, exact
        q = xf * factor[..., None]
        blocks[r0:r1] = _codec.pack_codes(encode(q)).reshape(r1 - r0, nb, BLOCK // 2)
        scales[r0:r1] = (exp + E8M0_BIAS).astype(np.uint8)

    _codec.run_chunks(work, x2.shape[0], _codec.pick_chunk_rows(chunk_rows, cols), workers)
    return blocks.reshape(x.shape[:-1] + (nb, BLOCK // 2)), scales.reshape(x.shape[:-1] + (nb,))


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(blocks [..., rows, nb, 16], scales [..., rows, nb]) -> float32 [..., rows, nb*32].

    Exact: every e2m1 value times 2**(scale-127) is a float32 (scale byte 0 gives subnormals);
    scale byte 255 (e8m0 NaN) gives NaN.
    """
    blocks = np.asarray(blocks)
    scales = np.asarray(scales)
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape} do not pair up: "
                         f"expected blocks [..., rows, n, 16] with scales [..., rows, n]")
    values = FP4_PAIR_VALUES[blocks.astype(np.uint8)]            # [..., nb, 16, 2]
    values = values.reshape(scales.shape + (BLOCK,))
    values *= E8M0_VALUES[scales.astype(np.uint8)][..., None]
    return values.reshape(scales.shape[:-1] + (scales.shape[-1] * BLOCK,))


@dataclass
class MXFP4Weight:
    """Packed MXFP4 weight: blocks uint8 [..., out, in/32, 16], scales uint8 [..., out, in/32] (e8m0)."""

    blocks: np.ndarray
    scales: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.scales.shape[:-1]) + (self.scales.shape[-1] * 32,)

    def dequantize(self) -> np.ndarray:
        return dequantize_mxfp4(self.blocks, self.scales)
