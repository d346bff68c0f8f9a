"""RMSNorm as gpt-oss computes it: the statistic and the scale multiply in fp32, the result cast back."""

from __future__ import annotations

from onnx import TensorProto

from spec.network import Norm
from plugins.onnx.graph import Graph
from plugins.onnx.weights import WeightSource


def emit_rmsnorm(g: Graph, x: str, norm: Norm, weights: WeightSource) -> str:
    """x [..., H] -> x * rsqrt(mean(x^2) + eps) * scale, all in fp32, then the graph's dtype."""
    weights.check(norm.weight, (norm.size,))
    scale = g.weight(norm.weight, (norm.size,), lambda: weights.dense_chunks(norm.weight), dtype="float32")
    x32 = x if g.dtype == "float32" else g.op("Cast", x, to=TensorProto.FLOAT)
    # named rmsnorm_stat*: the fp32 statistic (x^2 overflows fp16 from |x| > 256, and gpt-oss's residual
    # stream reaches thousands)
    ms = g.op("ReduceMean", g.op("Mul", x32, x32, name="rmsnorm_stat_sq"), g.ints([-1]), keepdims=1,
              name="rmsnorm_stat_mean")
    inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", ms, g.f32(norm.eps, "eps"), name="rmsnorm_stat_eps"),
                                  name="rmsnorm_stat_sqrt"), name="rmsnorm_stat_inv")
    y = g.op("Mul", g.op("Mul", x32, inv), scale, name="rmsnorm")
    return y if g.dtype == "float32" else g.op("Cast", y, to=g.elem)
