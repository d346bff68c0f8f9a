"""Chunked == unchunked, bit for bit; bounded extra memory on a large tensor; input types; API errors."""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest
import torch

from numerics import (
    LossyTranscodeError,
    dequantize_fp8,
    dequantize_mxfp4,
    dequantize_nvfp4,
    fake_quantize_nvfp4_activations,
    fp8_kv_scale,
    iter_quantize_nvfp4,
    mxfp4_to_nvfp4_lossless,
    nvfp4_global_scale,
    pack_nibbles,
    quantize_fp8,
    quantize_fp8_per_tensor,
    quantize_mxfp4,
    quantize_nvfp4,
    unpack_nibbles,
)
from tests.support.quant import weights

X = weights((3, 40, 192), seed=11)        # 120 rows of the [-1, K] view
CHUNKINGS = [dict(chunk_rows=1, workers=1), dict(chunk_rows=7, workers=2), dict(chunk_rows=10_000, workers=1),
             dict(chunk_rows=None, workers=None)]


@pytest.mark.parametrize("rule", ["floor", "rceil", "modelopt"])
def test_mxfp4_chunked_equals_unchunked(rule):
    ref = quantize_mxfp4(X, rule, chunk_rows=10_000, workers=1)
    for kw in CHUNKINGS:
        b, s = quantize_mxfp4(X, rule, **kw)
        np.testing.assert_array_equal(b, ref[0])
        np.testing.assert_array_equal(s, ref[1])


@pytest.mark.parametrize("recipe", ["modelopt", "torchao"])
def test_nvfp4_chunked_equals_unchunked(recipe):
    ref = quantize_nvfp4(X, recipe=recipe, chunk_rows=10_000, workers=1)
    for kw in CHUNKINGS:
        q = quantize_nvfp4(X, recipe=recipe, **kw)
        np.testing.assert_array_equal(q.packed, ref.packed)
        np.testing.assert_array_equal(q.block_scale.view(np.uint8), ref.block_scale.view(np.uint8))
        assert q.global_scale == ref.global_scale and q.shape == X.shape
    parts = list(iter_quantize_nvfp4(X, recipe=recipe, chunk_rows=7))
    assert [p[0].start for p in parts] == list(range(0, 120, 7))
    np.testing.assert_array_equal(np.concatenate([p[1].packed for p in parts]), ref.packed.reshape(120, -1))
    np.testing.assert_array_equal(np.concatenate([p[1].block_scale.view(np.uint8) for p in parts]),
                                  ref.block_scale.view(np.uint8).reshape(120, -1))


def test_fp8_and_activations_chunked_equals_unchunked():
    ref, s = quantize_fp8_per_tensor(X, chunk_rows=10_000, workers=1)
    act = fake_quantize_nvfp4_activations(X, 0.01, chunk_rows=10_000, workers=1)
    for kw in CHUNKINGS:
        d, s2 = quantize_fp8_per_tensor(X, **kw)
        assert s2 == s
        np.testing.assert_array_equal(d.view(np.uint8), ref.view(np.uint8))
        np.testing.assert_array_equal(fake_quantize_nvfp4_activations(X, 0.01, **kw), act)


def test_large_tensor_bounded_extra_memory():
    """A [16, 512, 2880] bf16 tensor (47 MB as fp32) quantizes with extra memory of a few chunks."""
    x = np.random.default_rng(0).standard_normal((16, 512, 2880), dtype=np.float32).astype(ml_dtypes.bfloat16)
    out_bytes = x.size // 2 + x.size // 16
    tracemalloc.start()
    try:
        q = quantize_nvfp4(x, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert q.packed.nbytes + q.block_scale.nbytes == out_bytes
    extra = peak - out_bytes
    assert extra < 12 * 2 ** 20, f"extra memory {extra / 2**20:.1f} MiB for a {x.size * 4 / 2**20:.0f} MiB fp32 input"


def test_bf16_widening_is_exact_on_every_pattern():
    from numerics._codec import to_f32
    u = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(to_f32(u.view(ml_dtypes.bfloat16)).view(np.uint32), u.astype(np.uint32) << 16)


def test_torch_and_numpy_inputs_agree():
    xt = torch.from_numpy(X).bfloat16()
    xn = X.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(quantize_nvfp4(xt).packed, quantize_nvfp4(xn).packed)
    np.testing.assert_array_equal(quantize_mxfp4(xt, "floor")[0], quantize_mxfp4(xn, "floor")[0])
    np.testing.assert_array_equal(quantize_mxfp4(xt.float(), "floor")[0], quantize_mxfp4(xn.astype(np.float32))[0])
    np.testing.assert_array_equal(quantize_nvfp4(X.astype(np.float16)).packed,
                                  quantize_nvfp4(X.astype(np.float16).astype(np.float32)).packed)
    assert nvfp4_global_scale(torch.tensor(2688.0)) == np.float32(1.0)


def test_roundtrips_and_dataclasses():
    q = quantize_nvfp4(X)
    np.testing.assert_array_equal(q.dequantize(), dequantize_nvfp4(q.packed, q.block_scale.view(np.uint8),
                                                                   q.global_scale))
    assert q.dequantize(np.float16).dtype == np.float16 and q.weight_scale_2 == q.global_scale
    f = quantize_fp8(X)
    assert f.shape == X.shape
    np.testing.assert_array_equal(f.dequantize(), dequantize_fp8(f.data.view(np.uint8), f.scale))
    codes = np.arange(16, dtype=np.uint8).repeat(2)
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(codes)), codes)


def test_scales_helpers():
    assert fp8_kv_scale(448.0 * 0.25) == 1.0  # clamped up to 1.0 as ModelOpt's export does
    assert fp8_kv_scale(448.0 * 0.25, clamp_to_one=False) == np.float32(0.25)
    assert fp8_kv_scale(0.0) == 1.0
    assert nvfp4_global_scale(0.0) == np.float32(2.0 ** -126)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_nvfp4(np.zeros((2, 24), np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_mxfp4(np.zeros((2, 48), np.float32))
    with pytest.raises(ValueError, match="unknown MXFP4 scale rule"):
        quantize_mxfp4(X, "ceil")
    with pytest.raises(ValueError, match="unknown NVFP4 recipe"):
        quantize_nvfp4(X, recipe="trtllm")
    with pytest.raises(ValueError, match="finite positive"):
        quantize_nvfp4(X, 0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_nvfp4(np.full((1, 16), np.inf, np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_fp8_per_tensor(np.full((1, 16), np.nan, np.float32))
    with pytest.raises(TypeError, match="float32, float16, bfloat16"):
        quantize_nvfp4(np.zeros((1, 16), np.int32))
    with pytest.raises(ValueError, match="do not pair up"):
        dequantize_nvfp4(np.zeros((2, 8), np.uint8), np.zeros((2, 2), np.uint8), 1.0)
    with pytest.raises(ValueError, match="do not pair up"):
        dequantize_mxfp4(np.zeros((2, 1, 8), np.uint8), np.zeros((2, 1), np.uint8))
    b, s = quantize_mxfp4(X)
    with pytest.raises(ValueError, match="e8m0 NaN"):
        mxfp4_to_nvfp4_lossless(b, np.full_like(s, 255))
    with pytest.raises(ValueError, match="below this tensor's own"):
        mxfp4_to_nvfp4_lossless(b, s, k_max=-100)
    b, s = quantize_mxfp4(weights((2, 8, 64), seed=3, specials=False))
    s2 = s.copy()
    s2[0, 1, 0] = 1  # 2**-126: far below the others, and the block is not all zero
    assert (b[0, 1, 0] & 0x77).any()
    with pytest.raises(LossyTranscodeError, match=f"^1 of {s.size} MXFP4 blocks"):
        mxfp4_to_nvfp4_lossless(b, s2)
