"""Properties of the quantizers on arbitrary finite float32 input (hypothesis): zeros, signed zeros,
subnormals and values near the limits of float32 and of each format included.

- No NaN comes out of finite input (scales and dequantized values).
- Dequantization error is within the format's bound, per element, for |x| <= 2**127 (above that a
  value can round up past float32's range, which dequantizes to inf; asserted separately):
    MXFP4  |x - y| <= max(|x|, 2**e) / 4             e = the block's exponent (half an e2m1 step)
    NVFP4  |x - y| <= max(|x| / 3, d / 4)            d = float32(block scale) * global scale;
           |x|/3 is reached only in blocks whose scale is an e4m3 subnormal (1.5 * 2**-9 -> 2**-9)
    FP8    |x - y| <= max(|x| * 2**-4, scale * 2**-10)
  and the scales are tight (not larger than the block needs), so the bounds mean something.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numerics import (
    LossyTranscodeError,
    dequantize_mxfp4,
    fake_quantize_nvfp4_activations,
    mxfp4_to_nvfp4_lossless,
    quantize_fp8_per_tensor,
    quantize_mxfp4,
    quantize_nvfp4,
)
from numerics.fp8 import E4M3_CODEC
from numerics.mxfp4 import E2M1, E8M0_VALUES

FLT_MAX = float(np.finfo(np.float32).max)
LIMITS = [0.0, -0.0, 2.0 ** -149, -(2.0 ** -149), 2.0 ** -127, 2.0 ** -126, 1e-38, 0.25, 0.75, 1.75, 3.5, 5.0,
          6.0, -6.0, 448.0, 464.0, 2688.0, 2.0 ** 126, -(2.0 ** 127), 2.0 ** 127]
LIMITS = [float(np.float32(v)) for v in LIMITS]  # exactly representable, as hypothesis requires
SLACK = 1 + 2.0 ** -20
SETTINGS = settings(max_examples=100, deadline=None)


def _arrays(max_abs: float, block: int = 32):
    elems = st.one_of(
        st.floats(-max_abs, max_abs, width=32, allow_subnormal=True),
        st.sampled_from([v for v in LIMITS + [FLT_MAX, -FLT_MAX] if abs(v) <= max_abs]),
    )
    shapes = st.tuples(st.integers(1, 3), st.integers(1, 3)).map(lambda s: (s[0], s[1] * block))
    return shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=elems))


ANY_FINITE = _arrays(FLT_MAX)
BOUNDED = _arrays(2.0 ** 127)


def _blocks(x: np.ndarray, n: int) -> np.ndarray:
    return x.reshape(x.shape[:-1] + (x.shape[-1] // n, n))


# -- MXFP4 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["floor", "rceil", "modelopt"])
@SETTINGS
@given(x=ANY_FINITE)
def test_mxfp4_no_nan(rule, x):
    blocks, scales = quantize_mxfp4(x, rule)
    assert (scales < 255).all()
    with np.errstate(over="ignore"):
        y = dequantize_mxfp4(blocks, scales)
    assert not np.isnan(y).any()
    big = np.abs(x) > 2.0 ** 127
    assert np.isfinite(y[~big]).all()


@pytest.mark.parametrize("rule", ["floor", "rceil", "modelopt"])
@SETTINGS
@given(x=BOUNDED)
def test_mxfp4_error_bound(rule, x):
    blocks, scales = quantize_mxfp4(x, rule)
    y = dequantize_mxfp4(blocks, scales)
    step = E8M0_VALUES[scales][..., None]                      # 2**e per block
    xb, yb = _blocks(x.astype(np.float64), 32), _blocks(y.astype(np.float64), 32)
    err = np.abs(xb - yb)
    assert (err <= np.maximum(np.abs(xb), step) / 4 * SLACK).all()
    amax = np.abs(xb).max(-1)
    tight = scales == 0
    tight |= E8M0_VALUES[scales] <= amax / 3 * SLACK      # floor: <= amax/4; rceil: < amax/3
    assert tight.all()


# -- NVFP4 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["modelopt", "torchao"])
@SETTINGS
@given(x=ANY_FINITE)
def test_nvfp4_no_nan(recipe, x):
    q = quantize_nvfp4(x, recipe=recipe)
    assert np.isfinite(q.global_scale) and q.global_scale > 0
    assert not np.isnan(q.block_scale.astype(np.float32)).any()
    with np.errstate(over="ignore"):
        assert not np.isnan(q.dequantize()).any()


@pytest.mark.parametrize("recipe", ["modelopt", "torchao"])
@SETTINGS
@given(x=BOUNDED, shared=st.sampled_from([1.0, 1.0, 37.0]))
def test_nvfp4_error_bound(recipe, x, shared):
    amax = float(np.abs(x).max())
    g = None if shared == 1.0 else max(amax * shared / 2688.0, 2.0 ** -126)  # a larger shared scale
    q = quantize_nvfp4(x, g, recipe=recipe)
    y = q.dequantize().astype(np.float64)
    d = (q.block_scale.astype(np.float32) * q.global_scale).astype(np.float64)[..., None]
    xb, yb = _blocks(x.astype(np.float64), 16), _blocks(y, 16)
    err = np.abs(xb - yb)
    assert (err <= np.maximum(np.abs(xb) / 3, d / 4) * SLACK + 2.0 ** -149).all()
    amax_j = np.abs(xb).max(-1)
    floor = (2.0 ** -9 if recipe == "modelopt" else 2.0 ** -6) * float(q.global_scale)
    if recipe == "modelopt":
        # blocks whose amax / (6 g) is 0 in float32 (all zero, or underflowing) get 1.0 by rule
        zero_rule = amax_j.astype(np.float32) / (np.float32(6) * q.global_scale) == 0
        d = np.where(zero_rule[..., None], 0.0, d)
    assert (d[..., 0] <= (amax_j / 6 * (1 + 2.0 ** -4) + floor) * SLACK + 2.0 ** -149).all()


@SETTINGS
@given(x=BOUNDED)
def test_nvfp4_activation_fake_quant(x):
    amax = float(np.abs(x).max())
    in_scale = max(amax / 2688.0, 2.0 ** -126)
    y = fake_quantize_nvfp4_activations(x, in_scale).astype(np.float64)
    assert not np.isnan(y).any()
    xb, yb = _blocks(x.astype(np.float64), 16), _blocks(y, 16)
    err = np.abs(xb - yb)
    tol = np.maximum(np.abs(xb) / 3, 6 * 2.0 ** -10 * in_scale)
    tol = np.maximum(tol, np.abs(xb).max(-1, keepdims=True) / 6 * (1 + 2.0 ** -4) / 4)
    assert (err <= tol * SLACK + 2.0 ** -149).all()


def test_nvfp4_activation_saturates_above_calibration():
    x = np.linspace(-10, 10, 64, dtype=np.float32).reshape(2, 32)
    y = fake_quantize_nvfp4_activations(x, 1.0 / 2688.0)  # calibrated amax 1.0
    assert np.abs(y).max() <= 1.0 and (np.abs(y[np.abs(x) >= 1.0]) == 1.0).all()


# -- FP8 ----------------------------------------------------------------------------------------------
@SETTINGS
@given(x=_arrays(FLT_MAX, block=1))
def test_fp8_no_nan(x):
    data, s = quantize_fp8_per_tensor(x)
    assert np.isfinite(s) and s > 0
    assert not np.isnan(data.astype(np.float32)).any()


@SETTINGS
@given(x=_arrays(2.0 ** 127, block=1))
def test_fp8_error_bound(x):
    data, s = quantize_fp8_per_tensor(x)
    y = data.astype(np.float64) * float(s)
    err = np.abs(x.astype(np.float64) - y)
    assert (err <= np.maximum(np.abs(x) * 2.0 ** -4, float(s) * 2.0 ** -10) * SLACK + 2.0 ** -149).all()
    assert float(s) <= max(float(np.abs(x).max()) / 448 * SLACK, 2.0 ** -126) or float(s) == 1.0


# -- MXFP4 -> NVFP4 -----------------------------------------------------------------------------------
@st.composite
def _mxfp4(draw, span: int | None):
    rows, nb = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    blocks = draw(hnp.arrays(np.uint8, (rows, nb, 16)))
    if span is None:
        scales = draw(hnp.arrays(np.uint8, (rows, nb), elements=st.integers(0, 254)))
    else:
        top = draw(st.integers(1 + span, 254))
        scales = draw(hnp.arrays(np.uint8, (rows, nb), elements=st.integers(top - span, top)))
    return blocks, scales


@SETTINGS
@given(mx=_mxfp4(span=17))
def test_transcode_is_exact_within_span(mx):
    blocks, scales = mx
    with np.errstate(over="ignore"):
        ref = dequantize_mxfp4(blocks, scales)
        out = mxfp4_to_nvfp4_lossless(blocks, scales).dequantize()
    np.testing.assert_array_equal(out, ref)


@SETTINGS
@given(mx=_mxfp4(span=None))
def test_transcode_exact_or_refuses(mx):
    blocks, scales = mx
    with np.errstate(over="ignore"):
        ref = dequantize_mxfp4(blocks, scales)
        try:
            out = mxfp4_to_nvfp4_lossless(blocks, scales)
        except LossyTranscodeError:
            lossy = mxfp4_to_nvfp4_lossless(blocks, scales, allow_lossy=True).dequantize()
            assert not np.isnan(lossy).any()
            return
        np.testing.assert_array_equal(out.dequantize(), ref)


# -- the table-lookup casts ---------------------------------------------------------------------------
def _probe_floats(n: int = 1 << 20) -> np.ndarray:
    """Random float32 bit patterns plus every threshold of e2m1/e4m3 and its neighbours."""
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2 ** 32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    e4m3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    e4m3 = e4m3[np.isfinite(e4m3)]
    e4m3 = np.sort(e4m3)
    mids = (e4m3[1:] + e4m3[:-1]) / 2
    grid = np.concatenate([e4m3, mids, np.float32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 464.0])])
    grid = np.concatenate([grid, -grid]).astype(np.float32)
    near = np.concatenate([grid, np.nextafter(grid, np.float32(np.inf)), np.nextafter(grid, np.float32(-np.inf))])
    scaled = np.concatenate([near * np.float32(2.0 ** k) for k in (-3, 0, 3)])
    return np.concatenate([rand, scaled]).astype(np.float32)


def test_lut_casts_equal_ml_dtypes_saturating_casts():
    v = _probe_floats()
    finite = v[~np.isnan(v)]
    ref = np.clip(finite, -6, 6).astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0x0F
    np.testing.assert_array_equal(E2M1(finite), ref)
    # the e2m1 table (built from numerics' threshold rounding) on every key's representative, NaN included
    reps = (np.arange(E2M1.table.size, dtype=np.uint32) << E2M1.shift).view(np.float32)
    with np.errstate(invalid="ignore"):
        ref_all = np.clip(reps, -6, 6).astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0x0F
    np.testing.assert_array_equal(E2M1.table, ref_all)
    ref8 = np.clip(finite, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(E4M3_CODEC(finite), ref8)
    nan = np.float32([np.nan, -np.nan])
    assert np.isnan(E4M3_CODEC(nan).view(ml_dtypes.float8_e4m3fn).astype(np.float32)).all()
