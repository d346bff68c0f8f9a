"""The MLP: MoE (biased router, top-k then softmax over k, only the routed experts run) or dense; both with
gpt-oss's clamped SwiGLU.

MoE: logits = x @ Wr.T + br; TopK(k) of the logits; softmax over those k; then plugins/onnx/experts.py, the
sparse lowering of every quant format: (token, slot) pairs sorted by expert, each expert's gate|up GEMM,
SwiGLU and down GEMM on its own rows, outputs summed with the routing weights. No pass over all experts and no
weight copies, for any number of tokens.
SwiGLU: gate clamped above at `limit`, up clamped to [-limit, limit], out = (up + 1) * gate * sigmoid(alpha*gate).
"""

from __future__ import annotations

from onnx import TensorProto

from spec.network import DenseMLP, MoE
from plugins.onnx.graph import Graph
from plugins.onnx.experts import emit_moe_experts
from plugins.onnx.linear import emit_fp32_linear, emit_linear
from plugins.onnx.weights import WeightSource


def emit_clamped_swiglu(g: Graph, gate_up: str, inter: int, alpha: float, limit: float | None) -> str:
    """gate_up [..., 2I] (gate first) -> [..., I]."""
    gate, up = g.op("Split", gate_up, g.ints([inter, inter]), axis=-1, outputs=2)
    if limit is not None:
        gate = g.op("Clip", gate, None, g.scalar(limit, "swiglu_limit"))                # above only
        up = g.op("Clip", up, g.scalar(-limit, "swiglu_neg_limit"), g.scalar(limit, "swiglu_limit"))
    glu = g.op("Mul", gate, g.op("Sigmoid", g.op("Mul", gate, g.scalar(alpha, "swiglu_alpha"))))
    return g.op("Mul", g.op("Add", up, g.scalar(1.0, "one")), glu, name="swiglu")


def emit_moe(g: Graph, h: str, m: MoE, weights: WeightSource) -> str:
    """h [b, s, hidden] -> [b, s, hidden]."""
    H = m.router.in_features
    inter = m.gate.out_features
    x = g.op("Reshape", h, g.ints([-1, H]))                                     # [N, H]
    # Routing is an fp32 island: router GEMM, TopK and the softmax over k (a bf16 rounding of near-tied
    # logits picks other experts; TopK also takes no bf16 before opset 24).
    logits = emit_fp32_linear(g, x, m.router, weights)                           # [N, E] fp32
    top_vals, top_idx = g.op("TopK", logits, g.ints([m.top_k]), axis=-1, largest=1, sorted=1, outputs=2,
                             name="router_topk")
    route_w = g.op("Softmax", top_vals, axis=-1, name="route_weights")          # softmax over the k
    if g.dtype != "float32":
        route_w = g.op("Cast", route_w, to=g.elem)
    y = emit_moe_experts(g, x, top_idx, route_w, m, weights,
                         lambda gate_up: emit_clamped_swiglu(g, gate_up, inter, m.swiglu_alpha, m.swiglu_limit))
    return g.op("Reshape", y, g.op("Shape", h), name="moe_out")


def emit_dense_mlp(g: Graph, h: str, m: DenseMLP, weights: WeightSource) -> str:
    gate_up = emit_linear(g, h, (m.gate, m.up), weights)
    act = emit_clamped_swiglu(g, gate_up, m.gate.out_features, m.swiglu_alpha, m.swiglu_limit)
    return emit_linear(g, act, m.down, weights)
