"""MXFP4 (OCP microscaling): e2m1 values, one e8m0 power-of-two scale per block of 32.

Storage matches what gpt-oss ships: `blocks` uint8 [..., rows, cols/32, 16] with two e2m1 codes per byte
(low nibble = even element), `scales` uint8 [..., rows, cols/32] holding the biased exponent
(value = LUT[code] * 2**(scale - 127)).

Scale rules (pick one explicitly; they differ on about half of all blocks):
  "floor": OCP MX spec / torchao ScaleCalculationMode.FLOOR: exp = floor(log2(amax)) - 2, values that land
           above 6 after scaling saturate to +-6.
  "rceil": torchao RCEIL / OpenAI triton kernels: exp = ceil(log2(amax / 6)), nothing saturates.
Values are rounded to nearest e2m1, ties to even.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BLOCK = 32
E8M0_BIAS = 127
# e2m1 code -> value. Codes 8..15 are the negatives of 0..7 (sign bit 3); code 8 is -0.
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)
SCALE_RULES = ("floor", "rceil")


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [..., 2n] -> bytes [..., n], low nibble = even element."""
    codes = codes.astype(np.uint8)
    return (codes[..., 0::2] & 0x0F) | ((codes[..., 1::2] & 0x0F) << 4)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """bytes [..., n] -> uint8 codes [..., 2n]."""
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def fp4_codes(x: np.ndarray) -> np.ndarray:
    """float32 values already scaled into e2m1 range -> e2m1 codes (round-half-even, saturating at 6)."""
    return np.asarray(x, dtype=np.float32).astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0x0F


def _block_exponents(amax: np.ndarray, rule: str) -> np.ndarray:
    if rule == "floor":
        # The exponent bits of amax are floor(log2(amax)) for normal floats; zero and fp32 subnormals
        # read as -127 and end at the clamp below, as in torchao.
        exp = ((amax.view(np.int32) >> 23) & 0xFF).astype(np.int32) - 127 - 2
    elif rule == "rceil":
        with np.errstate(divide="ignore"):
            exp = np.ceil(np.log2(amax / np.float32(6.0)))
        exp = np.where(amax > 0, exp, -127).astype(np.int32)
    else:
        raise ValueError(f"unknown MXFP4 scale rule {rule!r}; choose one of {SCALE_RULES}")
    return np.clip(exp, -127, 127)


def quantize_mxfp4(x: np.ndarray, rule: str = "floor") -> tuple[np.ndarray, np.ndarray]:
    """float array [..., rows, cols] (cols % 32 == 0) -> (blocks [..., rows, cols/32, 16], scales)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got shape {x.shape}")
    blocked = x.reshape(x.shape[:-1] + (x.shape[-1] // BLOCK, BLOCK))
    amax = np.abs(blocked).max(axis=-1)
    exp = _block_exponents(amax, rule)
    scaled = blocked * np.exp2(-exp.astype(np.float32))[..., None]
    codes = fp4_codes(scaled)
    return pack_nibbles(codes), (exp + E8M0_BIAS).astype(np.uint8)


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(blocks [..., rows, nb, 16], scales [..., rows, nb]) -> float32 [..., rows, nb*32]."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape} do not pair up: "
                         f"expected blocks [..., rows, n, 16] with scales [..., rows, n]")
    values = FP4_VALUES[unpack_nibbles(blocks)]
    factor = np.exp2(scales.astype(np.float32) - E8M0_BIAS)
    out = values * factor[..., None]
    return out.reshape(scales.shape[:-1] + (scales.shape[-1] * BLOCK,))
