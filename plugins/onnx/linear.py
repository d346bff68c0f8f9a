"""Linear layers in ONNX, one emitter per quant format, looked up by the linear's `quant`.

    y = emit_linear(g, x, linear, weights)               # x [..., in] -> y [..., out]
    y = emit_linear(g, x, (gate, up), weights)           # several linears, one GEMM, outputs concatenated
    gemm_e = expert_gemm(g, expert_linears, weights)     # gemm_e(x_rows [m, in], e, pairs) -> [m, out]

`linear` is a spec.network.Linear (or ExpertLinear), `weights` a plugins.onnx.weights.WeightSource. Formats
register in LINEAR_EMITTERS / EXPERT_GEMMS with these signatures (the linears of one call share a format);
quantized weights go in with Graph.packed_weight (FP4 / FP8 / uint8 bytes, streamed), scales likewise.
"bf16" is the unquantized format: weights are written in the graph's compute dtype (float32, float16 or
bfloat16). Weight-only formats whose weights dequantize exactly into that dtype (MXFP4, NVFP4 W4A16) are
written dequantized, which is the reference runtime's numerics for them.

Plain linears keep the checkpoint's [out, in] layout and run as Gemm(transB=1), so weights stream to disk
row by row. Experts are [E, out, in]; every format runs them through plugins/onnx/experts.py ((token, slot)
pairs sorted by expert, one GEMM per expert on its own rows), which calls the format's per-expert GEMM
(EXPERT_GEMMS): here a dense [out, in] initializer per expert, never a gather of weights per token.
"""

from __future__ import annotations

from typing import Callable

from plugins.onnx.gemm import dense_bias, gemm
from plugins.onnx.graph import Graph
from plugins.onnx.quant import quant_expert_gemm, quant_linear
from plugins.onnx.stored import keeps_bf16, stored_linear
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
    b = dense_bias(g, linears, weights)
    if keeps_bf16(g, linears, weights):        # the packed CPU lowering: bf16 as stored, widened per block at run time
        for lin in linears:
            weights.check(lin.weight, (lin.out_features, lin.in_features))
        return stored_linear(g, x, linears, _merged_name(linears),
                             lambda: (c for lin in linears for c in weights.dense_chunks(lin.weight, lin.quant)), b)
    w = dense_weight(g, linears, weights)
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


def expert_slice_weight(g: Graph, linears, weights: WeightSource, e: int) -> str:
    """Expert e's [sum(out), in] initializer in the graph's dtype: its rows of the linears' [E, out, in] weights,
    one linear after the other (quantized values dequantized as the reference runtime does)."""
    import torch
    from plugins.reference.linear import dequantize
    E, n_in = linears[0].num_experts, linears[0].in_features
    for lin in linears:
        weights.check(lin.weight, (E, lin.out_features, n_in))

    def chunks():
        parts = [weights.value(lin.weight, slice(e, e + 1)) for lin in linears]
        yield torch.cat([p if (lin.quant == "bf16" and isinstance(p, torch.Tensor))
                         else dequantize(p, lin.quant, lin.weight, torch.float32)
                         for p, lin in zip(parts, linears)], dim=1)[0]
    return g.weight(f"{_merged_name(linears)}.expert{e}", (sum(lin.out_features for lin in linears), n_in), chunks)


def _plain_expert_gemm(g: Graph, linears, weights: WeightSource):
    """Expert e's rows [m, in] @ its dense [out, in] weight.T (plugins.onnx.experts runs one per expert)."""
    def gemm_e(x_rows: str, e: int, pairs=None) -> str:
        return g.op("Gemm", x_rows, expert_slice_weight(g, linears, weights, e), transB=1,
                    name=f"{linears[0].weight}.expert{e}.gemm")
    return gemm_e


def expert_gemm(g: Graph, linears, weights: WeightSource):
    """The per-expert GEMM factory of the linears' quant format (EXPERT_GEMMS)."""
    linears = _as_tuple(linears)
    return _lookup(EXPERT_GEMMS, _quant_of(linears), "expert")(g, linears, weights)


# quant format -> emitter. Keys are spec.registry.quant_formats names. Quantized formats keep their weights
# quantized in the graph (FP4/FP8 initializers and Q/DQ, one per expert): plugins/onnx/quant.py.

LINEAR_EMITTERS: dict[str, Callable] = {
    "bf16": _plain_linear,
    "mxfp4": quant_linear,
    "w4a16-nvfp4": quant_linear,
    "nvfp4": quant_linear,
    "fp8": quant_linear,
}
EXPERT_GEMMS: dict[str, Callable] = {
    "bf16": _plain_expert_gemm,
    "mxfp4": quant_expert_gemm,
    "w4a16-nvfp4": quant_expert_gemm,
    "nvfp4": quant_expert_gemm,
    "fp8": quant_expert_gemm,
}
