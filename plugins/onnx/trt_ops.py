"""TensorRT's custom ONNX ops on the CPU: what `trt::TRT_FP4DynamicQuantize` computes, for
onnx.reference (a registered op implementation) and for runtimes that only know standard ops (a rewrite).

TRT_FP4DynamicQuantize(x, global_scale; axis=-1, block_size=16, scale_type=FLOAT8E4M3FN) -> (x_fp4,
block_scale_e4m3): per block of 16 along the last axis, sf8 = e4m3(min(amax / 6 / global, 448)) and
x_fp4 = e2m1(x / (sf8 * global)) rounded to nearest even, saturating at 6. The CPU implementation is
numerics.nvfp4.quantize_nvfp4_activations (TensorRT-LLM's cvt_warp_fp16_to_fp4 arithmetic), so a graph
evaluated here matches the reference runtime's W4A4 emulation bit for bit; what TensorRT's own kernel
rounds differently (reciprocal approximations) is not measured here.

`rewrite_fp4_dynamic_quantize(model)` replaces each TRT_FP4DynamicQuantize -> DQ(scale) -> DQ(x) chain
with standard ops computing the same float values (block amax, e4m3 cast of the block scale, e2m1
rounding by threshold comparisons, ties to even), for ONNX Runtime, which has neither trt:: ops nor FP4
DequantizeLinear.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_23

from plugins.onnx.quant import TRT_DOMAIN


class TRT_FP4DynamicQuantize(OpRun):
    op_domain = TRT_DOMAIN

    def _run(self, x, global_scale, axis=-1, block_size=16, scale_type=TensorProto.FLOAT8E4M3FN):
        from numerics.nvfp4 import BLOCK, quantize_nvfp4_activations
        if axis not in (-1, x.ndim - 1) or block_size != BLOCK or scale_type != TensorProto.FLOAT8E4M3FN:
            raise NotImplementedError(f"TRT_FP4DynamicQuantize: only axis=-1, block_size={BLOCK}, FLOAT8E4M3FN "
                                      f"scales are implemented on the CPU (got axis={axis}, block_size="
                                      f"{block_size}, scale_type={scale_type})")
        x = np.asarray(x)
        if x.size == 0:  # an expert no token chose: zero rows
            sf_shape = x.shape[:-1] + (x.shape[-1] // block_size,) if x.ndim else (0,)
            return np.zeros(x.shape, ml_dtypes.float4_e2m1fn), np.zeros(sf_shape, ml_dtypes.float8_e4m3fn)
        codes, sf8 = quantize_nvfp4_activations(np.asarray(x, dtype=np.float32), np.float32(global_scale))
        return _fp4(codes), sf8


def _fp4(codes: np.ndarray) -> np.ndarray:
    """e2m1 codes (uint8, one per element) -> ml_dtypes.float4_e2m1fn values (onnx.reference's FP4 type)."""
    from numerics.mxfp4 import FP4_VALUES
    return FP4_VALUES[codes].astype(ml_dtypes.float4_e2m1fn)


class DequantizeLinear(DequantizeLinear_23):
    """onnx.reference's DequantizeLinear (opset 23), except that an empty input keeps its shape."""

    def _run(self, x, *args, axis=1, block_size=0, output_dtype=None):
        if np.asarray(x).size == 0:
            return (np.zeros(np.asarray(x).shape, dtype=np.asarray(args[0]).dtype),)
        return super()._run(x, *args, axis=axis, block_size=block_size, output_dtype=output_dtype)


class Gather(OpRun):
    """onnx.reference's Gather returns shape (0,) for empty indices; numpy's take keeps the right shape."""

    def _run(self, x, indices, axis=0):
        return (np.take(np.asarray(x), np.asarray(indices, dtype=np.int64), axis=axis),)


# Registered with onnx.reference: TensorRT's op, and two standard ops whose reference implementations lose the
# shape of empty tensors (the rows of an expert no token chose).
CUSTOM_OPS = [TRT_FP4DynamicQuantize, DequantizeLinear, Gather]


def reference_evaluator(model, **kw):
    """onnx.reference.ReferenceEvaluator that also runs TensorRT's trt:: ops used by our graphs."""
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model, new_ops=CUSTOM_OPS, **kw)


# -- rewrite to standard ops ----------------------------------------------------------------------------------
# e2m1 rounding of |q| as a sum of steps: each threshold adds the gap to the next value. Ties go to the
# even code: at 0.25, 1.25, 2.5 and 5 down (strict >), at 0.75, 1.75 and 3.5 up (>=).
_STEPS = [(0.25, 0.5, "Greater"), (0.75, 0.5, "GreaterOrEqual"), (1.25, 0.5, "Greater"),
          (1.75, 0.5, "GreaterOrEqual"), (2.5, 1.0, "Greater"), (3.5, 1.0, "GreaterOrEqual"), (5.0, 2.0, "Greater")]


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _fake_quant_nodes(x: str, g: str, out: str, p: str, block: int) -> tuple[list, list]:
    """Standard-op nodes computing the NVFP4 fake-quant of x (float32 [..., K]) into `out`."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), f"{p}/{name}")  # noqa: E731
    inits = [c("blk", np.array([-1, block], np.int64)), c("neg1", np.array([-1], np.int64)),
             c("inv6", np.float32(1.0 / 6.0)), c("one", np.float32(1.0)), c("e4m3_max", np.float32(448.0)),
             c("zero", np.float32(0.0)), helper.make_tensor(f"{p}/zp", TensorProto.FLOAT8E4M3FN, [], [0.0])]
    n = lambda op, ins, name, **a: helper.make_node(op, ins, [f"{p}/{name}"], name=f"{p}/{name}", **a)  # noqa: E731
    nodes = [
        n("Shape", [x], "shape"),
        n("Reshape", [x, f"{p}/blk"], "xb"),  # [N, 16]
        n("Abs", [f"{p}/xb"], "abs"),
        n("ReduceMax", [f"{p}/abs", f"{p}/neg1"], "amax", keepdims=1),
        # sf = (1/g) * (amax * (1/6)), as the kernel computes it; e4m3 with saturation at 448
        n("Div", [f"{p}/one", g], "sf_scale"),
        n("Mul", [f"{p}/amax", f"{p}/inv6"], "amax6"),
        n("Mul", [f"{p}/sf_scale", f"{p}/amax6"], "sf"),
        n("Min", [f"{p}/sf", f"{p}/e4m3_max"], "sf_sat"),
        n("QuantizeLinear", [f"{p}/sf_sat", f"{p}/one", f"{p}/zp"], "sf8"),
        n("DequantizeLinear", [f"{p}/sf8", f"{p}/one"], "sf8f"),
        # scale = 1 / (sf8 * (1 / sf_scale)) where sf8 != 0, else 0
        n("Div", [f"{p}/one", f"{p}/sf_scale"], "inv_sf_scale"),
        n("Mul", [f"{p}/sf8f", f"{p}/inv_sf_scale"], "denom"),
        n("Div", [f"{p}/one", f"{p}/denom"], "recip"),
        n("Equal", [f"{p}/sf8f", f"{p}/zero"], "is_zero"),
        n("Where", [f"{p}/is_zero", f"{p}/zero", f"{p}/recip"], "scale"),
        n("Mul", [f"{p}/xb", f"{p}/scale"], "q"),
        n("Abs", [f"{p}/q"], "qa"),
        n("Sign", [f"{p}/q"], "qs"),
    ]
    acc = None
    for i, (thr, gap, op) in enumerate(_STEPS):
        inits += [c(f"t{i}", np.float32(thr)), c(f"g{i}", np.float32(gap))]
        nodes += [n(op, [f"{p}/qa", f"{p}/t{i}"], f"c{i}"),
                  n("Cast", [f"{p}/c{i}"], f"cf{i}", to=TensorProto.FLOAT),
                  n("Mul", [f"{p}/cf{i}", f"{p}/g{i}"], f"s{i}")]
        if acc is None:
            acc = f"{p}/s{i}"
        else:
            nodes.append(n("Add", [acc, f"{p}/s{i}"], f"acc{i}"))
            acc = f"{p}/acc{i}"
    # value = sign * e2m1(|q|) * (sf8 * g), as DQ(DQ(sf8, g), x_fp4) computes it
    nodes += [n("Mul", [acc, f"{p}/qs"], "e2m1"),
              n("Mul", [f"{p}/sf8f", g], "block_scale"),
              n("Mul", [f"{p}/e2m1", f"{p}/block_scale"], "deq")]
    nodes.append(helper.make_node("Reshape", [f"{p}/deq", f"{p}/shape"], [out], name=f"{p}/out"))
    return nodes, inits


def rewrite_fp4_dynamic_quantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of model where every TRT_FP4DynamicQuantize -> DQ(scale, g) -> DQ(x_fp4, scale) chain is
    standard float ops with the same values (the chain's final output keeps its name)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    users = _consumers(graph)
    keep, added, inits = [], [], []
    drop = set()
    for node in graph.node:
        if node.op_type != "TRT_FP4DynamicQuantize" or node.domain != TRT_DOMAIN:
            continue
        x, g = node.input
        x_fp4, x_sf = node.output
        [dq_scale] = users.get(x_sf, [None])
        [dq_x] = users.get(x_fp4, [None])
        if dq_scale is None or dq_x is None or dq_x.input[1] != dq_scale.output[0]:
            raise ValueError(f"{node.name}: TRT_FP4DynamicQuantize outputs must feed the two-DequantizeLinear "
                             f"pattern to be rewritten")
        block = next((a.i for a in node.attribute if a.name == "block_size"), 16)
        nodes, new_inits = _fake_quant_nodes(x, g, dq_x.output[0], f"{node.name}/cpu", block)
        added.append((node.name, nodes))
        inits += new_inits
        drop |= {id(node), id(dq_scale), id(dq_x)}
    replacement = dict(added)
    for node in graph.node:
        if id(node) in drop:
            if node.name in replacement:
                keep += replacement[node.name]
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(inits)
    return m
