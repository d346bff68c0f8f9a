"""Bit-exactness of numerics against NVIDIA ModelOpt 0.47 and torchao 0.18, which CI installs
(tools/install-test-deps.sh). Packed bytes AND scales are compared exactly; where we deviate on purpose
the deviation is asserted to be exactly the documented one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    # Harmless import-time noise: torch.jit deprecations inside modelopt, modelopt's "transformers
    # version not tested" notice.
    warnings.simplefilter("ignore")
    from modelopt.torch.export.shard_cast_utils import quantize_mxfp4_to_nvfp4_lossless
    from modelopt.torch.quantization.qtensor import FP8QTensor, MXFP4QTensor, NVFP4QTensor
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize

from numerics import (
    dequantize_mxfp4,
    mxfp4_kmax,
    mxfp4_to_nvfp4_lossless,
    nvfp4_global_scale,
    quantize_fp8_per_tensor,
    quantize_mxfp4,
    quantize_nvfp4,
)
from numerics.mxfp4 import E2M1, _block_exponents
from numerics.transcode import LossyTranscodeError
from tests.support.quant import weights

SHAPES = [(64, 2880), (2, 48, 512)]  # a gpt-oss row width, and a small expert stack
DTYPES = [torch.float32, torch.bfloat16]


def _u8(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.uint8).numpy() if t.dtype != torch.uint8 else t.numpy()


def _inputs():
    for shape in SHAPES:
        for seed, bf16 in ((0, False), (1, True)):
            for dt in DTYPES:
                x = torch.from_numpy(weights(shape, seed=seed, bf16=bf16))
                yield pytest.param(x.to(dt), id=f"{'x'.join(map(str, shape))}-seed{seed}-{str(dt)[6:]}")


# -- NVFP4 vs ModelOpt NVFP4QTensor ------------------------------------------------------------------
@pytest.mark.parametrize("x", list(_inputs()))
@pytest.mark.parametrize("g_factor", [None, 100.0, 0.1], ids=["own-amax", "shared-larger", "smaller"])
def test_nvfp4_matches_modelopt(x, g_factor):
    amax = x.float().abs().max()
    g = None if g_factor is None else (amax * g_factor / 2688.0).float()
    q, s, g_ref = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=g, try_tensorrt=False)
    ours = quantize_nvfp4(x, None if g is None else g.item())
    assert np.float32(g_ref.item()) == ours.global_scale
    np.testing.assert_array_equal(_u8(s), ours.block_scale.view(np.uint8))
    np.testing.assert_array_equal(_u8(q._quantized_data), ours.packed)
    deq = q.dequantize(dtype=torch.float32, scale=s, double_scale=g_ref, block_sizes={-1: 16})
    np.testing.assert_array_equal(deq.numpy(), ours.dequantize())


def test_nvfp4_global_scale_matches_modelopt():
    amaxes = torch.tensor([1e-30, 3e-3, 0.1, 1.0, 7.25, 448.0, 3e5, 2.0 ** 120], dtype=torch.float32)
    amaxes = torch.cat([amaxes, torch.rand(2000) * 10])
    for a in amaxes:
        ref = NVFP4QTensor.get_weights_scaling_factor_2(a.reshape(1, 1))
        assert nvfp4_global_scale(a) == np.float32(ref.item())


def test_nvfp4_nan_block_matches_modelopt():
    x = torch.randn(4, 64)
    x[1, 20] = float("nan")
    g = torch.tensor(x.nan_to_num().abs().max().item() / 2688.0)
    q, s, _ = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=g)
    ours = quantize_nvfp4(x, g.item())
    np.testing.assert_array_equal(_u8(q._quantized_data), ours.packed)
    assert ours.block_scale.view(np.uint8)[1, 1] & 0x7F == 0x7F  # e4m3 NaN
    np.testing.assert_array_equal(_u8(s) & 0x7F, ours.block_scale.view(np.uint8) & 0x7F)


def test_nvfp4_all_zero_tensor_is_our_documented_deviation():
    x = torch.zeros(2, 32)
    _, s, g = NVFP4QTensor.quantize(x, 16)
    assert g.item() == 0 and torch.isnan(s.float()).all()  # ModelOpt: 0/0
    ours = quantize_nvfp4(x)
    assert ours.global_scale == np.float32(2.0 ** -126)
    assert (ours.block_scale.astype(np.float32) == 1.0).all() and (ours.packed == 0).all()
    assert (ours.dequantize() == 0).all()


# -- NVFP4 vs torchao nvfp4_quantize -----------------------------------------------------------------
@pytest.mark.parametrize("x", list(_inputs()))
@pytest.mark.parametrize("single_level", [False, True])
def test_nvfp4_torchao_recipe_matches_torchao(x, single_level):
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    g = 1.0 if single_level else x.float().abs().max().item() / 2688.0
    s, d = nvfp4_quantize(x2, 16, None if single_level else torch.tensor(g, dtype=torch.float32))
    ours = quantize_nvfp4(x2, g, recipe="torchao")
    np.testing.assert_array_equal(_u8(s), ours.block_scale.view(np.uint8))
    np.testing.assert_array_equal(_u8(d), ours.packed)


# -- MXFP4 vs ModelOpt MXFP4QTensor and torchao to_mx ------------------------------------------------
@pytest.mark.parametrize("x", list(_inputs()))
def test_mxfp4_modelopt_rule_matches_modelopt(x):
    q, e8 = MXFP4QTensor.quantize(x, 32)
    blocks, scales = quantize_mxfp4(x, "modelopt")
    np.testing.assert_array_equal(e8.numpy().reshape(scales.shape), scales)
    np.testing.assert_array_equal(_u8(q._quantized_data), blocks.reshape(q._quantized_data.shape))


def test_mxfp4_modelopt_rule_differs_from_rceil_only_by_ties_and_zero_sign():
    """The exact relation: same scales (away from log2 boundaries), and codes equal except that ModelOpt
    rounds e2m1 ties toward zero and writes every exact zero as -0."""
    x = torch.from_numpy(weights((64, 2880), seed=3, bf16=True))  # bf16 data: plenty of exact ties
    bm, sm = quantize_mxfp4(x, "modelopt")
    br, sr = quantize_mxfp4(x, "rceil")
    np.testing.assert_array_equal(sm, sr)
    from numerics.mxfp4 import E8M0_VALUES, FP4_PAIR_VALUES
    q = x.numpy().reshape(sr.shape + (32,)) * E8M0_VALUES[254 - sr.astype(np.int64)][..., None]
    cm = FP4_PAIR_VALUES[bm].reshape(q.shape)
    cr = FP4_PAIR_VALUES[br].reshape(q.shape)
    tie = np.isin(np.abs(q), [0.75, 1.75, 3.5])
    differ = cm != cr
    assert differ.any() and tie.any()
    np.testing.assert_array_equal(differ, tie)  # values differ exactly at the odd ties
    assert (np.abs(cm[tie]) < np.abs(cr[tie])).all()
    zero = q == 0
    assert zero.any()
    assert (np.signbit(cm[zero])).all()  # -0 code for every exact zero


@pytest.mark.parametrize("x", list(_inputs()))
@pytest.mark.parametrize("mode,rule", [(ScaleCalculationMode.FLOOR, "floor"), (ScaleCalculationMode.RCEIL, "rceil")])
def test_mxfp4_matches_torchao(x, mode, rule):
    e8, d = to_mx(x.contiguous(), torch.float4_e2m1fn_x2, 32, mode)
    blocks, scales = quantize_mxfp4(x, rule)
    ref_scales = _u8(e8).reshape(scales.shape)
    if rule == "rceil":
        # torchao's CPU RCEIL takes ceil of a float32 log2: our "modelopt" exponent, not the exact one.
        amax = np.abs(x.float().numpy()).reshape(scales.shape + (32,)).max(-1)
        np.testing.assert_array_equal(ref_scales, _block_exponents(amax, "modelopt") + 127)
        same = ref_scales == scales
    else:
        np.testing.assert_array_equal(ref_scales, scales)
        same = np.ones(scales.shape, bool)
    ref_blocks = _u8(d).reshape(blocks.shape)
    normal = same & (scales != 0)
    np.testing.assert_array_equal(ref_blocks[normal], blocks[normal])
    # Documented deviation, scale byte 0: torchao scales the data by 2**126 (FLOOR) or 1 (RCEIL).
    tiny = scales == 0
    if tiny.any():
        xt = x.float().numpy().reshape(scales.shape + (32,))[tiny]
        factor = np.float32(2.0 ** 126) if rule == "floor" else np.float32(1.0)
        expect = E2M1(xt * factor)
        np.testing.assert_array_equal(ref_blocks[tiny], (expect[:, 0::2] | (expect[:, 1::2] << 4)))
        ours = dequantize_mxfp4(blocks[tiny][:, None], scales[tiny][:, None]).reshape(xt.shape)
        np.testing.assert_allclose(ours, xt, rtol=1 / 3, atol=2.0 ** -129)  # we keep the data


def test_mxfp4_rceil_is_exact_where_torchao_rounds_log2():
    # amax/6 a few ulps above 2**k: float32 log2 rounds to k, the exact ceiling is k + 1.
    base = np.float32(6.0 * 2.0 ** 10)
    amax = np.array([np.nextafter(base, np.float32(np.inf))], np.float32)
    x = torch.zeros(1, 32)
    x[0, 0] = float(amax[0])
    e8, _ = to_mx(x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.RCEIL)
    _, ours = quantize_mxfp4(x, "rceil")
    _, mo = quantize_mxfp4(x, "modelopt")
    assert _u8(e8).item() == 127 + 10 == mo.item()
    assert ours.item() == 127 + 11  # 2**11 * 6 >= amax > 2**10 * 6


# -- FP8 vs ModelOpt FP8QTensor ----------------------------------------------------------------------
@pytest.mark.parametrize("x", list(_inputs()))
def test_fp8_matches_modelopt(x):
    xf = x.float()  # ModelOpt computes in the input dtype; bf16 input is reproduced via its float32 copy
    q, s = FP8QTensor.quantize(xf)
    data, scale = quantize_fp8_per_tensor(x)
    assert np.float32(s.item()) == scale
    np.testing.assert_array_equal(_u8(q._quantized_data), data.view(np.uint8))


def test_fp8_saturates_like_modelopt():
    x = torch.randn(8, 64) * 3
    small = torch.tensor(x.abs().max().item() / 448.0 / 8)  # most of the tensor overflows e4m3
    q, _ = FP8QTensor.quantize(x, scales=small)
    data, _ = quantize_fp8_per_tensor(x, small.item())
    np.testing.assert_array_equal(_u8(q._quantized_data), data.view(np.uint8))
    assert not np.isnan(data.astype(np.float32)).any()


# -- MXFP4 -> NVFP4 vs ModelOpt quantize_mxfp4_to_nvfp4_lossless --------------------------------------
def _modelopt_transcode(blocks, scales, k_max):
    packed = torch.from_numpy(blocks.reshape(blocks.shape[:-2] + (-1,)))
    return quantize_mxfp4_to_nvfp4_lossless(packed, torch.from_numpy(scales), k_max, "cpu")


@pytest.mark.parametrize("rule", ["floor", "rceil"])
@pytest.mark.parametrize("bf16", [False, True])
def test_transcode_matches_modelopt_lossless(rule, bf16):
    x = weights((4, 64, 256), seed=5, bf16=bf16, specials=False)
    x[0, 0, :32] = 0
    x[1, 1, :32] = -0.0
    x[2, 2, :32] *= np.float32(2.0 ** -8)
    blocks, scales = quantize_mxfp4(x, rule)
    assert (blocks & 0x0F == 8).any() or (blocks >> 4 == 8).any()  # -0 nibbles present
    k_max = mxfp4_kmax(scales)
    packed, ws, ws2, n_blocks, n_lossless = _modelopt_transcode(blocks, scales, k_max)
    ours = mxfp4_to_nvfp4_lossless(blocks, scales)
    assert n_lossless == n_blocks == scales.size
    assert np.float32(ws2.item()) == ours.global_scale
    np.testing.assert_array_equal(_u8(ws), ours.block_scale.view(np.uint8))
    np.testing.assert_array_equal(packed.numpy(), ours.packed)
    np.testing.assert_array_equal(ours.dequantize(), dequantize_mxfp4(blocks, scales))
    kept = mxfp4_to_nvfp4_lossless(blocks, scales, negative_zero="keep")
    np.testing.assert_array_equal(kept.packed, blocks.reshape(ours.packed.shape))
    np.testing.assert_array_equal(kept.dequantize(), ours.dequantize())


def test_transcode_lossy_blocks_error_or_match_modelopt():
    x = weights((2, 32, 128), seed=6, specials=False)
    x[0, 3, 32:64] *= np.float32(1e-7)   # 2**-23 below: k_max - k_j > 17
    x[1, 5, :32] *= np.float32(1e-9)
    blocks, scales = quantize_mxfp4(x, "rceil")
    k_max = mxfp4_kmax(scales)
    packed, ws, ws2, n_blocks, n_lossless = _modelopt_transcode(blocks, scales, k_max)
    assert n_blocks - n_lossless == 2
    with pytest.raises(LossyTranscodeError, match=r"^2 of 256 MXFP4 blocks"):
        mxfp4_to_nvfp4_lossless(blocks, scales)
    ours = mxfp4_to_nvfp4_lossless(blocks, scales, allow_lossy=True)
    np.testing.assert_array_equal(_u8(ws), ours.block_scale.view(np.uint8))
    np.testing.assert_array_equal(packed.numpy(), ours.packed)
    assert np.float32(ws2.item()) == ours.global_scale


def test_transcode_shared_kmax_matches_modelopt():
    x = weights((2, 16, 64), seed=7)
    blocks, scales = quantize_mxfp4(x, "floor")
    k_shared = mxfp4_kmax(scales) + 3  # e.g. the max over gate and up
    packed, ws, ws2, _, _ = _modelopt_transcode(blocks, scales, k_shared)
    ours = mxfp4_to_nvfp4_lossless(blocks, scales, k_max=k_shared, allow_lossy=True)
    np.testing.assert_array_equal(_u8(ws), ours.block_scale.view(np.uint8))
    np.testing.assert_array_equal(packed.numpy(), ours.packed)
    assert np.float32(ws2.item()) == ours.global_scale


# -- the e2m1/e4m3 casts, on every lookup key (each key stands for a whole interval of float32) ------
def _key_representatives(cast) -> np.ndarray:
    keys = np.arange(cast.table.size, dtype=np.uint32)
    reps = (keys << cast.shift).view(np.float32)
    reps = reps[np.isfinite(reps)]
    near = np.concatenate([reps, np.nextafter(reps, np.float32(np.inf)), np.nextafter(reps, np.float32(-np.inf))])
    return near[np.isfinite(near)]


def test_e2m1_casts_match_modelopt_and_torchao_on_every_key():
    from torchao.prototype.mx_formats.kernels import f32_to_f4_unpacked

    from numerics.mxfp4 import E2M1_MODELOPT_MX
    from numerics.nvfp4 import E2M1_MODELOPT_NV
    v = _key_representatives(E2M1)
    vt = torch.from_numpy(v.copy())
    np.testing.assert_array_equal(NVFP4QTensor._cast_fp4(vt.clone()).numpy(), E2M1_MODELOPT_NV(v))
    np.testing.assert_array_equal(f32_to_f4_unpacked(torch.clamp(vt, -6, 6)).numpy(), E2M1(v))
    # MXFP4QTensor's cast is internal: put 6.0 first in every block so its scale is 2**0.
    small = v[np.abs(v) <= 6.0]
    small = small[: small.size // 31 * 31].reshape(-1, 31)
    blocks = np.concatenate([np.full((small.shape[0], 1), 6.0, np.float32), small], axis=1)
    q, e8 = MXFP4QTensor.quantize(torch.from_numpy(blocks), 32)
    assert (e8.numpy() == 127).all()
    ours = E2M1_MODELOPT_MX(blocks)
    np.testing.assert_array_equal(q._quantized_data.numpy(), ours[:, 0::2] | (ours[:, 1::2] << 4))


def test_e4m3_cast_matches_torch_on_every_key():
    from numerics.fp8 import E4M3_CODEC
    v = _key_representatives(E4M3_CODEC)
    ref = torch.from_numpy(np.clip(v, -448, 448)).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(E4M3_CODEC(v), ref)
    import ml_dtypes  # the block scales are cast by ml_dtypes after the clamp: same bytes as torch
    np.testing.assert_array_equal(np.clip(v, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8), ref)
