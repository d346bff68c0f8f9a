"""Sparse experts in ONNX: one lowering for every quant format.

    y = emit_moe_experts(g, x, top_idx, route_w, moe, weights)    # x [N, H], top_idx / route_w [N, k] -> [N, H]
    y = emit_expert_linear(g, x, idx, linears, weights)          # x [N, 1|k, in], idx [N, k] -> [N, k, out]

1. The M = N*k (token, slot) pairs (pair p = token*k + slot) are sorted by expert with a stable counting sort
   in standard ops (Equal against 0..E-1, ReduceSum, CumSum, ScatterND; TensorRT-RTX has no NonZero):
   `order` lists the pairs expert by expert, expert e's are order[starts[e]:ends[e]], dest[p] is pair p's place.
2. The pairs' inputs are gathered once in that order: [M, in] activations, never weights.
3. Each expert runs its GEMMs on its own contiguous rows (a Slice with the dynamic bounds), its weights in the
   format's form (EXPERT_GEMMS in plugins.onnx.linear, by quant format: a dense [out, in] initializer per expert
   for "bf16", FP4 / FP8 initializers with Q/DQ for the quantized formats, plugins/onnx/quant.py). An expert no
   token chose runs a GEMM of zero rows: its weights are not read. So a prompt of T tokens costs T*k rows of
   activations, where gathering each token's expert weights (the layout before this one) materialized T*k whole
   weight matrices (33.5 GB for a 4,000-token prompt on a 58M-parameter model).
4. The results, in sorted order, go back to their pairs (a Gather by dest), are weighted by the routing
   probabilities and summed over the k slots: the reference runtime's arithmetic (plugins.reference.moe), which
   adds the k experts' weighted outputs the same way.
Biases are added in sorted order (a Gather of the [E, out] bias by each sorted pair's expert), after the GEMM,
as F.linear does.
"""

from __future__ import annotations

from typing import Callable

from onnx import TensorProto, helper

from plugins.onnx.gemm import dense_bias
from plugins.onnx.graph import ORT_CPU, ORT_CPU_PACKED, Graph
from plugins.onnx.linear import expert_gemm
from plugins.onnx.weights import WeightSource

# An expert GEMM factory: (g, linears, weights) -> gemm(x_rows [m, in], e, pairs) -> [m, sum(out)], expert e's
# linears applied to rows of its own (outputs concatenated); `pairs` (SortedPairs) for a form that needs the
# routing at run time (plugins/onnx/fp4.py's routed decode). Registered per quant format in
# plugins.onnx.linear.EXPERT_GEMMS.
ExpertGemm = Callable[[str, int, "SortedPairs"], str]


# Lowerings whose experts take their rows with one Split by the per-expert counts (a dynamic `split` input, which
# ONNX Runtime runs) instead of a Slice per expert: on ONNX Runtime's CPU provider each node costs ~10 us, which
# in a decode step of a small model is most of the time. TensorRT's lowering keeps the Slices.
SPLIT_LOWERINGS = (ORT_CPU, ORT_CPU_PACKED)


class SortedPairs:
    """The (token, slot) pairs of idx [N, k] sorted by expert (see the module docstring, step 1)."""

    def __init__(self, g: Graph, idx: str, num_experts: int, tag: str):
        self.g, self.E, self.tag = g, num_experts, tag
        self.lead = g.op("Shape", idx, name=f"{tag}.pairs_shape")                     # [N, k]
        flat = g.op("Reshape", idx, g.ints([-1]), name=f"{tag}.pairs")                 # [M] expert of each pair
        onehot = g.op("Cast", g.op("Equal", g.op("Unsqueeze", flat, g.ints([1])), g.ints(list(range(num_experts)))),
                      to=TensorProto.INT64)                                           # [M, E]
        self.counts = counts = g.op("ReduceSum", onehot, g.ints([0]), keepdims=0, name=f"{tag}.counts")   # [E]
        self.ends = g.op("CumSum", counts, g.ints(0), name=f"{tag}.ends")
        self.starts = g.op("Sub", self.ends, counts, name=f"{tag}.starts")
        self._bounds: dict[int, tuple[str, str]] = {}
        # rank of a pair among its expert's pairs, in pair order: the sort is stable (tokens stay in order)
        rank = g.op("Sub", g.op("ReduceSum", g.op("Mul", g.op("CumSum", onehot, g.ints(0)), onehot), g.ints([1]),
                                keepdims=0), g.ints(1))
        self.dest = g.op("Add", g.op("Gather", self.starts, flat, axis=0), rank, name=f"{tag}.dest")   # [M]
        m = g.op("Shape", flat)
        arange = g.op("Range", g.ints(0), g.op("Squeeze", m, g.ints([0])), g.ints(1))
        zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
        self.order = g.op("ScatterND", g.op("ConstantOfShape", m, value=zero), g.op("Unsqueeze", self.dest, g.ints([-1])),
                          arange, name=f"{tag}.order")                               # [M] pairs, by expert
        self.expert_of_sorted = g.op("Gather", flat, self.order, axis=0, name=f"{tag}.sorted_experts")

    def bounds(self, e: int) -> tuple[str, str]:
        """Expert e's [start], [end] in sorted order (made once, shared by its projections)."""
        g = self.g
        if e not in self._bounds:
            self._bounds[e] = (g.op("Slice", self.starts, g.ints([e]), g.ints([e + 1]), name=f"{self.tag}.expert{e}.start"),
                               g.op("Slice", self.ends, g.ints([e]), g.ints([e + 1]), name=f"{self.tag}.expert{e}.end"))
        return self._bounds[e]

    def rows(self, sorted_values: str, e: int) -> str:
        """Expert e's contiguous rows of a tensor in sorted order ([M, ...] -> [m_e, ...])."""
        start, end = self.bounds(e)
        return self.g.op("Slice", sorted_values, start, end, self.g.ints([0]), name=f"{self.tag}.expert{e}.rows")

    def per_expert(self, sorted_x: str, gemm: ExpertGemm, tag: str) -> str:
        """Each expert's GEMM on its rows of sorted_x [M, in] -> [M, out], still in sorted order."""
        if self.g.lowering in SPLIT_LOWERINGS and self.E > 1:
            parts = self.g.op("Split", sorted_x, self.counts, axis=0, outputs=self.E, name=f"{tag}.split")
        else:
            parts = [self.rows(sorted_x, e) for e in range(self.E)]
        outs = [gemm(parts[e], e, self) for e in range(self.E)]
        return outs[0] if len(outs) == 1 else self.g.op("Concat", *outs, axis=0, name=f"{tag}.sorted_out")

    def add_bias(self, y_sorted: str, bias: str | None) -> str:
        """+ each sorted pair's expert's bias (bias [E, out])."""
        if bias is None:
            return y_sorted
        return self.g.op("Add", y_sorted, self.g.op("Gather", bias, self.expert_of_sorted, axis=0))

    def unsort(self, y_sorted: str, out_features: int, tag: str) -> str:
        """[M, out] in sorted order -> [N, k, out] in pair order."""
        g = self.g
        return g.op("Reshape", g.op("Gather", y_sorted, self.dest, axis=0),
                    g.op("Concat", self.lead, g.ints([out_features]), axis=0), name=f"{tag}.experts_out")


def _linears(linear) -> tuple:
    return tuple(linear) if isinstance(linear, (tuple, list)) else (linear,)


def _expert_projection(g: Graph, pairs: SortedPairs, x_sorted: str, linears, weights: WeightSource) -> str:
    """[M, in] in sorted order -> [M, sum(out)] in sorted order: each expert's GEMM on its rows, plus bias."""
    tag = linears[0].weight
    y = pairs.per_expert(x_sorted, expert_gemm(g, linears, weights), tag)
    return pairs.add_bias(y, dense_bias(g, linears, weights, lead=(linears[0].num_experts,)))


def emit_expert_linear(g: Graph, x: str, idx: str, linear, weights: WeightSource) -> str:
    """x [N, 1|k, in] (one input per token, or one per pair), idx [N, k] -> [N, k, out]: pair (n, j) through
    expert idx[n, j]'s linear(s), sorted by expert, one GEMM per expert."""
    linears = _linears(linear)
    E, n_in = linears[0].num_experts, linears[0].in_features
    pairs = SortedPairs(g, idx, E, linears[0].weight)
    x_pairs = g.op("Reshape", g.op("Expand", x, g.op("Concat", pairs.lead, g.ints([n_in]), axis=0)),
                   g.ints([-1, n_in]))                                                 # [M, in]
    x_sorted = g.op("Gather", x_pairs, pairs.order, axis=0)
    y = _expert_projection(g, pairs, x_sorted, linears, weights)
    return pairs.unsort(y, sum(lin.out_features for lin in linears), linears[0].weight)


def emit_moe_experts(g: Graph, x: str, top_idx: str, route_w: str, m, weights: WeightSource,
                     activation: Callable[[str], str]) -> str:
    """x [N, H], top_idx [N, k], route_w [N, k] (graph dtype) -> sum_j route_w[n, j] * expert_j(x[n]), [N, H].
    `activation` maps gate|up [M, 2I] to [M, I] (the clamped SwiGLU), applied once to all pairs in sorted order."""
    k, H = m.top_k, m.down.out_features
    pairs = SortedPairs(g, top_idx, m.num_experts, m.gate.weight)
    token_of_sorted = g.op("Div", pairs.order, g.ints(k), name=f"{m.gate.weight}.sorted_tokens")   # p // k
    x_sorted = g.op("Gather", x, token_of_sorted, axis=0, name=f"{m.gate.weight}.sorted_x")        # [M, H]
    gate_up = _expert_projection(g, pairs, x_sorted, (m.gate, m.up), weights)                     # [M, 2I]
    y = _expert_projection(g, pairs, activation(gate_up), (m.down,), weights)                    # [M, H]
    y = pairs.unsort(y, H, m.down.weight)                                                         # [N, k, H]
    return g.op("ReduceSum", g.op("Mul", y, g.op("Unsqueeze", route_w, g.ints([-1]))), g.ints([1]), keepdims=0,
                name=f"{m.down.weight}.weighted_sum")
