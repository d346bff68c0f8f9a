"""Linear layers in ONNX, one emitter per quant format, looked up by the linear's `quant`.

    y = emit_linear(g, x, linear, weights)               # x [..., in] -> y [..., out]
    y = emit_linear(g, x, (gate, up), weights)           # several linears, one GEMM, outputs concatenated
    y = emit_expert_linear(g, x, idx, expert_linear, weights)   # x [N, 1|k, in], idx [N, k] -> [N, k, out]

`linear` is a spec.network.Linear (or ExpertLinear), `weights` a plugins.onnx.weights.WeightSource. Formats
register in LINEAR_EMITTERS / EXPERT_EMITTERS with these signatures (the linears of one call share a format);
quantized weights go in with Graph.packed_weight (FP4 / FP8 / uint8 bytes, streamed), scales likewise.
"bf16" is the unquantized format: weights are written in the graph's compute dtype (float32, float16 or
bfloat16). Weight-only formats whose weights dequantize exactly into that dtype (MXFP4, NVFP4 W4A16) are
written dequantized, which is the reference runtime's numerics for them.

Plain linears keep the checkpoint's [out, in] layout and run as Gemm(transB=1), so weights stream to disk
row by row. Experts are [E, out, in]: the token's k experts are gathered (Gather on the expert axis) and
applied as batched mat-vecs, so only the selected experts' weights are read.
"""

from __future__ import annotations

from typing import Callable

from plugins.onnx.gemm import dense_bias, gemm
from plugins.onnx.graph import Graph
from plugins.onnx.quant import quant_expert, quant_linear
from plugins.onnx.weights import WeightSource


def _as_tuple(linear) -> tuple:
    return tuple(linear) if isinstance(linear, (tuple, list)) else (linear,)


def _quant_of(linears) -> str:
    quants = {lin.quant for lin in linears}
    if len(quants) != 1:
        raise ValueError(f"linears {[lin.weight for lin in linears]} mix quant formats {sorted(quants)}; "
                         f"emit them separately")
    return quants.pop()


def _lookup(table: dict, quant: str, what: str) -> Callable:
    if quant not in table:
        raise NotImplementedError(f"no ONNX {what} emitter for quant format {quant!r}; registered: "
                                  f"{', '.join(sorted(table))}")
    return table[quant]


def emit_linear(g: Graph, x: str, linear, weights: WeightSource) -> str:
    linears = _as_tuple(linear)
    return _lookup(LINEAR_EMITTERS, _quant_of(linears), "linear")(g, x, linears, weights)


def emit_expert_linear(g: Graph, x: str, idx: str, linear, weights: WeightSource) -> str:
    linears = _as_tuple(linear)
    return _lookup(EXPERT_EMITTERS, _quant_of(linears), "expert")(g, x, idx, linears, weights)


# -- dense weights (unquantized, or weight-only formats dequantized) -------------------------------------------
def _merged_name(linears) -> str:
    return "+".join(lin.weight for lin in linears)


def dense_weight(g: Graph, linears, weights: WeightSource, dtype: str | None = None) -> str:
    """[sum(out), in] initializer in `dtype` (default: the graph's): the linears' weight rows one after the other."""
    for lin in linears:
        weights.check(lin.weight, (lin.out_features, lin.in_features))

    def chunks():
        for lin in linears:
            yield from weights.dense_chunks(lin.weight, lin.quant)
    return g.weight(_merged_name(linears), (sum(lin.out_features for lin in linears), linears[0].in_features),
                    chunks, dtype=dtype)


def _plain_linear(g: Graph, x: str, linears, weights: WeightSource) -> str:
    w = dense_weight(g, linears, weights)
    b = dense_bias(g, linears, weights)
    return gemm(g, x, w, b, linears[0].in_features, sum(lin.out_features for lin in linears))


def emit_fp32_linear(g: Graph, x: str, linear, weights: WeightSource) -> str:
    """An unquantized linear computed in fp32 whatever the graph's compute dtype (an fp32 island: the MoE
    router, whose top-k choice flips on bf16 rounding of near-tied logits). x is cast to fp32, weights and
    bias are written in fp32; the output is fp32. Quantized linears go through emit_linear (their format
    fixes their numerics), as do all where the target has no fp32 GEMM (g.island_gemm)."""
    from onnx import TensorProto
    linears = _as_tuple(linear)
    if g.island_gemm != "float32" or g.dtype == "float32" or _quant_of(linears) != "bf16":
        # in the compute dtype (fp32 accumulation on tensor cores), the island starting at its output
        y = emit_linear(g, x, linears, weights)
        return y if g.dtype == "float32" else g.op("Cast", y, to=TensorProto.FLOAT)
    w = dense_weight(g, linears, weights, dtype="float32")
    b = dense_bias(g, linears, weights, dtype="float32")
    x32 = g.op("Cast", x, to=TensorProto.FLOAT)
    return gemm(g, x32, w, b, linears[0].in_features, sum(lin.out_features for lin in linears))


def expert_weight(g: Graph, linears, weights: WeightSource) -> str:
    """[E, sum(out), in] initializer: per expert, the linears' rows one after the other."""
    import torch
    E, n_in = linears[0].num_experts, linears[0].in_features
    for lin in linears:
        weights.check(lin.weight, (E, lin.out_features, n_in))
    out = sum(lin.out_features for lin in linears)
    from plugins.reference.linear import dequantize

    def chunks():
        for rows in weights.row_chunks(linears[0].weight, 4 * out * n_in):
            parts = [weights.value(lin.weight, rows) for lin in linears]
            yield torch.cat([p if (lin.quant == "bf16" and isinstance(p, torch.Tensor))
                             else dequantize(p, lin.quant, lin.weight, torch.float32)
                             for p, lin in zip(parts, linears)], dim=1)
    return g.weight(_merged_name(linears), (E, out, n_in), chunks)


def gathered_matvec(g: Graph, x: str, idx: str, w_all: str, b_all: str | None) -> str:
    """x [N, 1|k, in], idx [N, k], w_all [E, out, in], b_all [E, out] -> [N, k, out]: each token's k experts,
    their weights gathered ([N, k, out, in]) and applied as mat-vecs."""
    w = g.op("Gather", w_all, idx, axis=0, name="gather_experts")
    y = g.op("Squeeze", g.op("MatMul", w, g.op("Unsqueeze", x, g.ints([-1])), name="expert_matvec"), g.ints([-1]))
    if b_all is not None:
        y = g.op("Add", y, g.op("Gather", b_all, idx, axis=0))
    return y


def _plain_expert(g: Graph, x: str, idx: str, linears, weights: WeightSource) -> str:
    w = expert_weight(g, linears, weights)
    b = dense_bias(g, linears, weights, lead=(linears[0].num_experts,))
    return gathered_matvec(g, x, idx, w, b)


# quant format -> emitter. Keys are spec.registry.quant_formats names. Quantized formats keep their weights
# quantized in the graph (FP4/FP8 initializers and Q/DQ, experts sorted by expert): plugins/onnx/quant.py.

LINEAR_EMITTERS: dict[str, Callable] = {
    "bf16": _plain_linear,
    "mxfp4": quant_linear,
    "w4a16-nvfp4": quant_linear,
    "nvfp4": quant_linear,
    "fp8": quant_linear,
}
EXPERT_EMITTERS: dict[str, Callable] = {
    "bf16": _plain_expert,
    "mxfp4": quant_expert,
    "w4a16-nvfp4": quant_expert,
    "nvfp4": quant_expert,
    "fp8": quant_expert,
}
