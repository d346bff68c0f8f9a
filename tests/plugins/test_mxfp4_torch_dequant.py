"""plugins.reference.linear.dequantize_mxfp4_torch against numerics.mxfp4.dequantize_mxfp4 (the project's
MXFP4 codec, itself checked against the OCP MX spec and transformers' MXFP4 dequantization): every code byte
with every scale byte (NaN for e8m0 255 included), bit for bit, across the row-chunk boundary."""

from __future__ import annotations

import numpy as np

import plugins.reference.linear as lin
from numerics.mxfp4 import MXFP4Weight, dequantize_mxfp4


def test_every_code_and_scale_byte_bit_identical(monkeypatch):
    monkeypatch.setattr(lin, "_MXFP4_ROWS", 7)                 # many chunks, a ragged last one
    codes = np.arange(256, dtype=np.uint8)
    blocks = np.broadcast_to(codes.reshape(16, 1, 16), (16, 16, 16)).reshape(1, 256, 1, 16).copy()
    blocks = np.repeat(blocks, 256, axis=2)[0][:, :, :]         # [256 rows, 256 blocks, 16]: codes vary over rows
    scales = np.broadcast_to(np.arange(256, dtype=np.uint8), (256, 256)).copy()   # every scale in every row
    with np.errstate(over="ignore", invalid="ignore"):
        want = dequantize_mxfp4(blocks, scales)
    got = lin.dequantize_mxfp4_torch(MXFP4Weight(blocks, scales)).numpy()
    assert got.shape == want.shape == (256, 256 * 32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    rng = np.random.default_rng(3)
    b = rng.integers(0, 256, (3, 20, 4, 16), dtype=np.uint8)
    s = rng.integers(100, 140, (3, 20, 4), dtype=np.uint8)
    assert np.array_equal(lin.dequantize_mxfp4_torch(MXFP4Weight(b, s)).numpy(), dequantize_mxfp4(b, s))
    s[0, 0, 0] += 1                                              # negative control: one scale byte changed
    assert not np.array_equal(lin.dequantize_mxfp4_torch(MXFP4Weight(b, s)).numpy(),
                              dequantize_mxfp4(b, s[::-1].copy()))
