"""Quantized linears and experts in ONNX (plugins/onnx/quant.py) against numerics and the reference runtime's
linears, in TensorRT's lowering evaluated by onnx.reference (FP4/FP8 Q/DQ; TensorRT's trt:: op through
plugins/onnx/trt_ops.py) and in the ONNX Runtime CPU lowering run by ONNX Runtime (standard ops), the two equal
bit for bit; TensorRT-RTX's own parser and builder judge the TensorRT patterns."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from numerics.fp8 import quantize_fp8
from numerics.mxfp4 import FP4_VALUES, MXFP4Weight, quantize_mxfp4
from numerics.nvfp4 import fake_quantize_nvfp4_activations, quantize_nvfp4, quantize_nvfp4_activations
from plugins.onnx import quant
from plugins.onnx.experts import emit_expert_linear
from plugins.onnx.fp4 import tensorrt_only
from plugins.onnx.graph import LOWERINGS, ORT_CPU, TENSORRT, Graph
from plugins.onnx.trt_ops import reference_evaluator
from plugins.onnx.weights import WeightSource
from plugins.reference.linear import activation_quantizer, prepare_linear
from spec.network import ExpertLinear, Linear

K, N, E = 64, 48, 4
RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 3, K)).astype(np.float32)
W = (RNG.standard_normal((N, K)) * 0.05).astype(np.float32)
WE = (RNG.standard_normal((E, N, K)) * 0.05).astype(np.float32)
B = (RNG.standard_normal((E, N)) * 0.1).astype(np.float32)


def quantized(fmt: str, w: np.ndarray):
    if fmt == "fp8":
        return quantize_fp8(w)
    if fmt == "mxfp4":
        return MXFP4Weight(*quantize_mxfp4(w, "floor"))
    return quantize_nvfp4(w)


def input_scale(fmt: str) -> np.float32:
    return np.float32(np.abs(X).max() / (448.0 if fmt == "fp8" else 6 * 448.0))


def run(g: Graph, feeds: dict) -> np.ndarray:
    return reference_evaluator(g.model()).run(None, feeds)[0]


@pytest.mark.parametrize("fmt", ["nvfp4", "w4a16-nvfp4", "mxfp4", "fp8"])
def test_linear_matches_reference_runtime(fmt):
    wq, s = quantized(fmt, W), input_scale(fmt)
    tensors = {"lin.weight": wq, "lin.input_scale": torch.tensor(s)}
    g = Graph("t")
    x = g.input("x", "float32", ["b", "s", K])
    y = quant.quant_linear(g, x, (Linear("lin.weight", None, K, N, quant=fmt),), WeightSource(tensors))
    g.output(y, "y", "float32", ["b", "s", N])
    got = run(g, {"x": X})
    ref_fmt = "w4a16-nvfp4" if fmt == "mxfp4" else fmt      # the graph holds MXFP4 as (lossless) NVFP4
    wref = quant.as_nvfp4(wq, "lin") if fmt == "mxfp4" else wq
    ref = prepare_linear(wref, None, ref_fmt, "lin", torch.float32, input_scale=s)(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    if fmt == "mxfp4":  # and the transcode was lossless: the MXFP4 values themselves
        np.testing.assert_array_equal(wref.dequantize(), wq.dequantize())
    # negative control: the graph without the format's activation quantizer is caught (W4A4 / W8A8)
    if activation_quantizer(fmt, s, "lin") is not None:
        unquantized_x = X @ wq.dequantize().T
        assert np.abs(got - unquantized_x).max() > 1e-3


def ort_run(g: Graph, feeds: dict, first: bool = True):
    import onnxruntime as ort
    model = g.model()
    assert tensorrt_only(model) == []
    outs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return outs[0] if first else outs


def test_trt_fp4_dynamic_quantize_matches_numerics_and_its_cpu_lowering():
    s = input_scale("nvfp4")
    graphs = {}
    for lowering in LOWERINGS:
        g = graphs[lowering] = Graph("t", lowering=lowering)
        x = g.input("x", "float32", ["b", "s", K])
        g.output(quant.emit_nvfp4_activation(g, x, s, "act"), "y", "float32", ["b", "s", K])
    model = graphs[TENSORRT].model()
    assert [n.op_type for n in model.graph.node if n.domain == "trt"] == ["TRT_FP4DynamicQuantize"]
    ref = reference_evaluator(model).run(None, {"x": X})[0]
    np.testing.assert_array_equal(ref, fake_quantize_nvfp4_activations(X, s))
    # the CPU lowering, standard ops written apart from numerics' code, on ONNX Runtime: the same values
    np.testing.assert_array_equal(ort_run(graphs[ORT_CPU], {"x": X}), ref)
    # codes and block scales are what the dequantized values say
    codes, sf8 = quantize_nvfp4_activations(X, s)
    back = FP4_VALUES[codes].reshape(2, 3, K // 16, 16) * (sf8.astype(np.float32) * s)[..., None]
    np.testing.assert_array_equal(back.reshape(X.shape), ref)


def test_cpu_lowering_of_fp4_activations_rounds_like_numerics_at_the_edges():
    """ONNX Runtime on the CPU lowering of W4A4's activation quantizer = numerics' emulation of TensorRT-LLM's
    NVFP4 activation quantization, bit for bit: ties, saturation above the calibrated amax, an all-zero block."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 64)).astype(np.float32) * rng.uniform(0.01, 4, (5, 1)).astype(np.float32)
    x[0, :16] = 0.0                                            # an all-zero block
    x[1, 16:32] = np.float32(60.0)                             # past the calibrated amax: saturates
    x[2, :8] = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], np.float32)   # e2m1 ties
    x[3, :8] = -x[2, :8]
    s = np.float32(6.0 / (6 * 448))                            # calibrated amax 6
    g = Graph("t", lowering=ORT_CPU)
    xi = g.input("x", "float32", ["n", 64])
    g.output(quant.emit_nvfp4_activation(g, xi, s, "act"), "y", "float32", ["n", 64])
    np.testing.assert_array_equal(ort_run(g, {"x": x}), fake_quantize_nvfp4_activations(x, s))


@pytest.mark.parametrize("fmt", ["nvfp4", "w4a16-nvfp4", "mxfp4"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cpu_lowering_of_fp4_linears_equals_the_tensorrt_lowering(fmt, dtype):
    """The same weight and linear in both lowerings: ONNX Runtime on the CPU form = onnx.reference on TensorRT's
    (dequantized weights bit for bit, the GEMM up to its accumulation order); only the TensorRT form has
    FLOAT4E2M1 tensors or trt:: ops."""
    wq, s = quantized(fmt, W), input_scale(fmt)
    x = X.astype(dtype)
    weights, outs, models = {}, {}, {}
    for lowering in LOWERINGS:
        g = Graph("t", dtype, lowering)
        xi = g.input("x", dtype, ["b", "s", K])
        y = quant.quant_linear(g, xi, (Linear("lin.weight", None, K, N, quant=fmt),),
                               WeightSource({"lin.weight": wq, "lin.input_scale": torch.tensor(s)}))
        g.output(y, "y", dtype, ["b", "s", N])
        g.output(quant.emit_dequantized_weight(g, wq, fmt, "w"), "w", "float32", [N, K])
        models[lowering] = g.model()
        outs[lowering], weights[lowering] = ort_run(g, {"x": x}, first=False) if lowering == ORT_CPU else \
            reference_evaluator(g.model()).run(None, {"x": x})
    assert tensorrt_only(models[ORT_CPU]) == [] and tensorrt_only(models[TENSORRT]) != []
    np.testing.assert_array_equal(weights[ORT_CPU], weights[TENSORRT])
    np.testing.assert_array_equal(weights[ORT_CPU], quant.as_nvfp4(wq, "w").dequantize())
    ref = outs[TENSORRT].astype(np.float32)
    tol = (2e-6 if dtype == "float32" else 2e-3) * np.abs(ref).max()
    np.testing.assert_allclose(outs[ORT_CPU].astype(np.float32), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("fmt,lowering", [("nvfp4", TENSORRT), ("fp8", TENSORRT), ("nvfp4", ORT_CPU)])
def test_experts_sorted_by_expert_match_per_pair_oracle(fmt, lowering):
    wq, s = quantized(fmt, WE), input_scale(fmt)
    lin = ExpertLinear("e.weight", "e.bias", E, K, N, quant=fmt)
    tensors = {"e.weight": wq, "e.bias": torch.from_numpy(B), "e.input_scale": torch.tensor(s)}
    g = Graph("t", lowering=lowering)
    x = g.input("x", "float32", ["n", 1, K])
    idx = g.input("idx", "int64", ["n", 2])
    g.output(emit_expert_linear(g, x, idx, (lin,), WeightSource(tensors)), "y", "float32", ["n", 2, N])
    model = g.model()
    xs = X.reshape(-1, 1, K)
    ids = np.array([[3, 1], [0, 3], [1, 3], [3, 0], [1, 0], [0, 1]], dtype=np.int64)   # expert 2: no token
    if lowering == ORT_CPU:
        got = ort_run(g, {"x": xs, "idx": ids})
        ref = reference_evaluator(_expert_graph(fmt)).run(None, {"x": xs, "idx": ids})[0]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(ref).max())   # = the TensorRT lowering
    else:
        got = reference_evaluator(model).run(None, {"x": xs, "idx": ids})[0]
    w = wq.dequantize()
    xq = activation_quantizer(fmt, s, "e")(torch.from_numpy(xs[:, 0])).numpy()
    want = np.einsum("nk,njok->njo", xq, w[ids]) + B[ids]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
    elem = {("nvfp4", TENSORRT): onnx.TensorProto.FLOAT4E2M1, ("fp8", TENSORRT): onnx.TensorProto.FLOAT8E4M3FN,
            ("nvfp4", ORT_CPU): onnx.TensorProto.UINT8}[fmt, lowering]                  # e2m1 codes, one a byte
    assert sum(t.data_type == elem and list(t.dims) == [N, K] for t in model.graph.initializer) == E  # one per expert


def test_lossy_mxfp4_block_is_named():
    w = (RNG.standard_normal((8, 64)) * 0.05).astype(np.float32)
    w[5, 32:64] *= 2.0 ** -30                        # row 5's second block far below the tensor's largest
    mx = MXFP4Weight(*quantize_mxfp4(w, "floor"))
    with pytest.raises(quant.QuantGraphError, match=r"layers\.0\.moe\.down\.weight: 1 MXFP4 block.*\(5, 1\)"):
        quant.as_nvfp4(mx, "layers.0.moe.down.weight")


def test_missing_input_scale_is_an_error_naming_it():
    g = Graph("t")
    x = g.input("x", "float32", ["b", K])
    with pytest.raises(quant.QuantGraphError, match=r"lin\.input_scale"):
        quant.quant_linear(g, x, (Linear("lin.weight", None, K, N, quant="nvfp4"),),
                           WeightSource({"lin.weight": quantize_nvfp4(W)}))


# -- TensorRT-RTX: its own parser and builder (ahead of time, no GPU) ------------------------------------------
def _expert_graph(fmt: str) -> onnx.ModelProto:
    wq, s = (torch.from_numpy(WE), 1.0) if fmt == "bf16" else (quantized(fmt, WE), input_scale(fmt))
    tensors = {"e.weight": wq, "e.bias": torch.from_numpy(B), "e.input_scale": torch.tensor(s)}
    g = Graph("t")
    x = g.input("x", "float32", ["batch", 1, K])
    idx = g.input("idx", "int64", ["batch", 2])
    g.output(emit_expert_linear(g, x, idx, (ExpertLinear("e.weight", "e.bias", E, K, N, quant=fmt),),
                                WeightSource(tensors)), "y", "float32", ["batch", 2, N])
    return g.model()


@pytest.mark.parametrize("fmt,sm", [("nvfp4", 120), ("fp8", 89), ("bf16", 120)])
def test_tensorrt_rtx_builds_the_patterns(tmp_path, fmt, sm):
    from builder.tensorrt.plan import Limits, build_plan, parses
    path = tmp_path / "g.onnx"
    onnx.save(_expert_graph(fmt), path)
    assert parses(path) == []
    r = build_plan(path, tmp_path / "g.plan", "tensorrt-rtx", sm, Limits(4, 1, 8))
    assert r.plan.stat().st_size == r.plan_bytes > 0


def test_tensorrt_rtx_refuses_what_the_patterns_avoid(tmp_path):
    """Why experts are sorted rather than gathered: a Gather of FP4 weights by expert index does not build."""
    from builder.tensorrt import PlanBuildError
    from builder.tensorrt.plan import Limits, build_plan, parses
    g = Graph("t")
    idx = g.input("idx", "int64", ["batch", 2])
    w = quantize_nvfp4(WE)
    codes = quant._lazy(g, "w.fp4", onnx.TensorProto.FLOAT4E2M1, w.shape, lambda: w.packed.tobytes())
    s8 = quant._lazy(g, "w.s8", onnx.TensorProto.FLOAT8E4M3FN, w.block_scale.shape,
                     lambda: w.block_scale.view(np.uint8).tobytes())
    scale = g.op("DequantizeLinear", s8, g.f32(w.global_scale))
    picked = g.op("Gather", codes, idx, axis=0)                                      # gather FP4 codes ...
    y = g.op("DequantizeLinear", picked, g.op("Gather", scale, idx, axis=0), axis=-1, block_size=16)  # ... then DQ
    g.output(y, "y", "float32", ["batch", 2, N, K])
    path = tmp_path / "bad.onnx"
    onnx.save(g.model(), path)
    with pytest.raises(PlanBuildError, match="FP4|could not build"):
        build_plan(path, tmp_path / "bad.plan", "tensorrt-rtx", 120, Limits(4, 1, 8))
    # and the parser names the node it rejects
    g2 = Graph("t")
    x = g2.input("x", "float32", ["batch", K])
    g2.output(g2.op("NoSuchOp", x, name="mystery"), "y", "float32", ["batch", K])
    onnx.save(g2.model(), tmp_path / "unknown.onnx")
    [err] = parses(tmp_path / "unknown.onnx")
    assert "node 0 (mystery, NoSuchOp)" in err
