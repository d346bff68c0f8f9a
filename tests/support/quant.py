"""Test inputs for the quantizers: gpt-oss-like weights with the cases that break quantizers.

Every generator returns float32 numpy arrays [..., K] with K a multiple of 32 and puts, at fixed rows:
exact-zero blocks, -0.0 blocks, blocks of tiny values (1e-6, 1e-30, float32 subnormals), outliers, and
blocks of exact e2m1 ties (midpoints times powers of two), on top of N(0, 0.02) weights.
"""

from __future__ import annotations

import numpy as np

TIES = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, -6.0],
                dtype=np.float32)


def weights(shape: tuple[int, ...], seed: int = 0, bf16: bool = False, specials: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    n = flat.shape[0]
    k = shape[-1]
    # outliers: a few elements 50x larger
    idx = rng.integers(0, flat.size, size=max(1, flat.size // 4000))
    flat.reshape(-1)[idx] *= 50
    cases = [
        lambda r: r.__setitem__(slice(0, 32), 0.0),
        lambda r: r.__setitem__(slice(32, 64), -0.0),
        lambda r: r.__setitem__(slice(0, 32), r[:32] * np.float32(1e-6)),
        lambda r: r.__setitem__(slice(0, 32), r[:32] * np.float32(1e-30)),
        lambda r: r.__setitem__(slice(0, 32), (rng.standard_normal(32) * 1e-40).astype(np.float32)),
        lambda r: r.__setitem__(slice(0, 32), np.tile(TIES, 2) * np.float32(2.0 ** -8)),
        lambda r: r.__setitem__(slice(0, 32), np.tile(TIES, 2) * np.float32(0.02 / 6 * 1.0)),
        lambda r: r.__setitem__(slice(0, 16), np.float32(1e-8)),  # half a block tiny, half normal
    ]
    for i, f in enumerate(cases):
        if specials and i < n and k >= 64:
            f(flat[i * (n // len(cases)) if n >= len(cases) else i])
    if bf16:
        x = round_to_bf16(x)
    return x


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bf16, returned as float32 (so bf16-representable)."""
    import ml_dtypes
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)
