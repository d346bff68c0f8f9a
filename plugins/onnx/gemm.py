"""The GEMM every linear lowers to, and its bias: shared by the plain emitters (linear.py) and the quantized
ones (quant.py), so both give TensorRT the same x [..., in] -> Gemm(transB) -> [..., out] pattern."""

from __future__ import annotations

from plugins.onnx.graph import Graph
from plugins.onnx.weights import WeightSource


def dense_bias(g: Graph, linears, weights: WeightSource, lead: tuple[int, ...] = (),
               dtype: str | None = None) -> str | None:
    """The linears' biases concatenated, in `dtype` (default: the graph's compute dtype)."""
    if all(lin.bias is None for lin in linears):
        return None
    if any(lin.bias is None for lin in linears):
        raise ValueError(f"linears {[lin.weight for lin in linears]}: some have a bias and some not")
    import torch
    for lin in linears:
        weights.check(lin.bias, lead + (lin.out_features,))

    def chunks():
        yield torch.cat([torch.as_tensor(weights.value(lin.bias)).float() for lin in linears], dim=-1)
    return g.weight("+".join(lin.bias for lin in linears), lead + (sum(lin.out_features for lin in linears),),
                    chunks, dtype=dtype)


def gemm(g: Graph, x: str, w: str, b: str | None, in_features: int, out_features: int) -> str:
    """x [..., in] @ w[out, in].T + b -> [..., out], as a 2-D Gemm between two reshapes."""
    lead = g.op("Slice", g.op("Shape", x), g.ints([0]), g.ints([-1]))
    x2 = g.op("Reshape", x, g.ints([-1, in_features]))
    # No bias: two inputs, not an empty third name (TensorRT's parser rejects Gemm with C = "").
    y2 = g.op("Gemm", x2, w, *([b] if b is not None else []), transB=1)
    return g.op("Reshape", y2, g.op("Concat", lead, g.ints([out_features]), axis=0))
