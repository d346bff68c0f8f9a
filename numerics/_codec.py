"""Shared vectorised kernels behind mxfp4.py, nvfp4.py and fp8.py (private).

- `LutCast`: float32 -> narrow-float code (e2m1, e4m3) through one table lookup. ml_dtypes' own casts are
  exact but slow (about 290 MiB/s of fp32 for e2m1 on the project machines); this is about 5x faster and
  lets each format state its own convention for ties, signed zeros and NaN.
- `block_amax`: max |x| per contiguous block, computed on the float bits (no float64, no temporaries of
  the whole tensor).
- `as_array` / `rows_f32`: accept numpy (float32, float16, ml_dtypes.bfloat16, float64) or torch tensors
  and hand out float32 row chunks; bf16 -> fp32 is a 16-bit shift, exact.
- `run_chunks`: call a function on row ranges, optionally on a few threads (numpy releases the GIL in
  its loops). Every row range is computed independently of the others, so results do not depend on
  `chunk_rows` or `workers`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import ml_dtypes
import numpy as np

ABS_MASK = np.uint32(0x7FFFFFFF)
# Elements per row chunk when the caller does not say: a few hundred KB of fp32, so the dozen
# temporaries of one chunk stay in the CPU caches.
DEFAULT_CHUNK_ELEMENTS = 1 << 16


class LutCast:
    """Exact float32 -> code conversion by table lookup.

    A rounding threshold of a float format with `mbits` mantissa bits (the midpoints between neighbours
    and the values themselves) has at most `mbits + 1` significant mantissa bits. The key
    (sign, exponent, top `mbits + 1` mantissa bits, sticky bit of the rest) therefore tells exactly which
    side of every threshold a float32 lies on, ties included, so `code_of` only has to be evaluated once
    per key, on one representative float32 of that key. `code_of` defines the whole convention
    (rounding of ties, saturation, sign of zero, NaN).
    """

    def __init__(self, mbits: int, code_of: Callable[[np.ndarray], np.ndarray]):
        self.shift = np.uint32(23 - (mbits + 1) - 1)
        self.low = np.uint32((1 << int(self.shift)) - 1)
        keys = np.arange(1 << (32 - int(self.shift)), dtype=np.uint32)
        reps = (keys << self.shift).view(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            self.table = np.ascontiguousarray(code_of(reps), dtype=np.uint8)

    def keys(self, q: np.ndarray) -> np.ndarray:
        """float32 array -> lookup keys (intp, the index type np.take wants)."""
        u = np.ascontiguousarray(q, dtype=np.float32).view(np.uint32)
        t = u & self.low
        t += self.low           # bit `shift` of t is set iff any bit below `shift` of u is
        t |= u
        t >>= self.shift
        return t.astype(np.intp)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        """float32 array -> uint8 codes of the same shape."""
        return self.table.take(self.keys(q))


def clamp_cast_codes(dtype, max_value: float):
    """code_of for IEEE-style round-half-even (ml_dtypes) with saturation at +-max_value.

    Signed zeros keep their sign; NaN keeps ml_dtypes' encoding (e2m1 has none: ml_dtypes gives -0).
    """
    def code_of(v: np.ndarray) -> np.ndarray:
        return np.clip(v, -max_value, max_value).astype(dtype).view(np.uint8)
    return code_of


def block_amax(u_abs: np.ndarray, block: int) -> np.ndarray:
    """|x| float bits (uint32, sign cleared) [..., n*block] -> max per block [..., n] as float32.

    On non-negative floats the integer order of the bits is the float order, and NaN (0x7FC...) sorts
    above inf, so a NaN anywhere in a block makes its amax NaN.
    """
    shape = u_abs.shape
    flat = u_abs.reshape(-1)
    m = flat
    width = 1
    while width < block:  # sliding-window max over `block` neighbours, then one element per block
        m = np.maximum(m[:-width], m[width:])
        width *= 2
    out = m[::block] if m.size else m
    return np.ascontiguousarray(out).view(np.float32).reshape(shape[:-1] + (shape[-1] // block,))


def f32_bits_abs(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint32) & ABS_MASK


# -- inputs --------------------------------------------------------------------------------------------
_FLOAT_KINDS = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64), np.dtype(ml_dtypes.bfloat16))


def as_array(x) -> np.ndarray:
    """numpy array or torch tensor -> numpy array (zero-copy where possible). torch bf16 becomes
    ml_dtypes.bfloat16."""
    if not isinstance(x, np.ndarray) and type(x).__module__.startswith("torch"):
        import torch
        t = x.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    x = np.asarray(x)
    if x.dtype not in _FLOAT_KINDS:
        raise TypeError(f"expected a float32, float16, bfloat16 or float64 array, got {x.dtype}")
    return x


def as_scalar(v) -> np.float32:
    """float, numpy scalar/array of one element, or torch tensor of one element -> np.float32."""
    if not isinstance(v, (float, int, np.generic, np.ndarray)) and type(v).__module__.startswith("torch"):
        v = v.detach().cpu().float().numpy()
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"expected a single scale value, got shape {a.shape}")
    return np.float32(a.reshape(()).astype(np.float32))


def to_f32(x: np.ndarray) -> np.ndarray:
    """Exact for float32/float16/bfloat16; float64 is rounded to nearest float32."""
    # ml_dtypes' bf16 -> float32 cast is the exact 16-bit widening (checked on all 65536 patterns in
    # tests) and the fastest way there.
    return np.ascontiguousarray(x, dtype=np.float32)


def tensor_amax(x2d: np.ndarray, chunk_rows: int) -> np.float32:
    """max |x| over a whole [rows, cols] array, chunked (NaN if any NaN)."""
    best = np.uint32(0)
    for r0 in range(0, x2d.shape[0], chunk_rows):
        part = x2d[r0:r0 + chunk_rows]
        if part.dtype == ml_dtypes.bfloat16:
            m = np.uint32(int((part.view(np.uint16) & np.uint16(0x7FFF)).max(initial=0)) << 16)
        else:
            m = f32_bits_abs(to_f32(part)).max(initial=0)
        best = max(best, m)
    return np.array(best, dtype=np.uint32).view(np.float32)[()]


def pick_chunk_rows(chunk_rows: int | None, cols: int) -> int:
    if chunk_rows is None:
        return max(1, DEFAULT_CHUNK_ELEMENTS // max(cols, 1))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return int(chunk_rows)


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def run_chunks(fn: Callable[[int, int], None], rows: int, chunk_rows: int, workers: int | None) -> None:
    """fn(r0, r1) for consecutive row ranges covering [0, rows); fn writes its own outputs."""
    ranges = [(r0, min(rows, r0 + chunk_rows)) for r0 in range(0, rows, chunk_rows)]
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(ranges) < 2:
        for r0, r1 in ranges:
            fn(r0, r1)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(ranges))) as pool:
        for f in [pool.submit(fn, r0, r1) for r0, r1 in ranges]:
            f.result()


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [..., 2n] (each < 16) -> bytes [..., n], low nibble = even element."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    w = c.view(np.uint16)  # little-endian: even element in the low byte
    if w.dtype.byteorder == ">" or (w.dtype.byteorder == "=" and not np.little_endian):  # pragma: no cover
        return (c[..., 0::2] & 0x0F) | ((c[..., 1::2] & 0x0F) << 4)
    return (w | (w >> np.uint16(4))).astype(np.uint8)
