"""bf16 weights kept as stored in the "onnxruntime-cpu-packed" lowering, widened to fp32 at run time.

ONNX Runtime's CPU provider has no bf16 GEMM, so the fp32 graph ("onnxruntime-cpu") holds every dense weight in
fp32: 7.2 GB for gpt-oss-20b's embedding, attention, routers and head, twice their checkpoint bytes. The packed
lowering keeps them as their bf16 bytes instead (half the memory, and the same bytes as the checkpoint's) and
casts them to fp32 where they are used: the embedding after its Gather (only the looked-up rows), a linear's
weight in row blocks of at most BLOCK_BYTES of fp32 just before its Gemm. bf16 -> fp32 is exact, so the values
and the fp32 GEMMs are those of the fp32 graph.

A Cast of an initializer would be folded back into an fp32 initializer when the session starts, so each block
is cut from the weight by a Slice whose bounds depend on the input's shape (Graph.runtime_int): ONNX Runtime
cannot fold it, and at most one block's fp32 copy is alive at a time per Gemm.
"""

from __future__ import annotations

from onnx import TensorProto

from plugins.onnx.graph import ORT_CPU_PACKED, Graph
from plugins.onnx.weights import WeightSource

# fp32 bytes of one widened block of a linear's weight: the transient a Gemm's weight costs at run time
# (gpt-oss-20b's head, 201088 x 2880, runs as 9 blocks of 256 MiB instead of one 2.3 GB fp32 matrix).
BLOCK_BYTES = 256 << 20
# Lowerings whose bf16 weights stay bf16 (an fp32 graph only: a bf16/fp16 graph computes in its own dtype).
STORED_BF16_LOWERINGS = (ORT_CPU_PACKED,)


def keeps_bf16(g: Graph, linears, weights: WeightSource) -> bool:
    """Whether these unquantized linears' (or the embedding's) weights are written as stored and widened at run
    time: in the packed lowering, when each is stored as bf16 (an fp32 checkpoint's weights stay fp32)."""
    return (g.lowering in STORED_BF16_LOWERINGS and g.dtype == "float32"
            and all(lin.quant == "bf16" and _stored_bf16(weights, lin.weight) for lin in linears))


def _stored_bf16(weights: WeightSource, name: str) -> bool:
    import torch
    first = weights.value(name, slice(0, 1))          # one row: the dtype without reading the tensor
    return isinstance(first, torch.Tensor) and first.dtype == torch.bfloat16


def stored_embedding(g: Graph, ids: str, emb, weights: WeightSource) -> str:
    """The [vocab, hidden] table as bf16; the looked-up rows cast to fp32."""
    table = g.weight(emb.weight, (emb.vocab_size, emb.hidden_size),
                     lambda: weights.dense_chunks(emb.weight, emb.quant), dtype="bfloat16")
    return g.op("Cast", g.op("Gather", table, ids, axis=0, name="embed"), to=TensorProto.FLOAT, name="embed_fp32")


def stored_linear(g: Graph, x: str, linears, w_name: str, w_chunks, bias: str | None) -> str:
    """x [..., in] @ W.T + b with W [out, in] stored bf16 (w_chunks: its rows, as WeightSource.dense_chunks
    yields them) -> [..., out] fp32, one Gemm per row block of W."""
    n_in = linears[0].in_features
    n_out = sum(lin.out_features for lin in linears)
    w = g.weight(w_name, (n_out, n_in), w_chunks, dtype="bfloat16")
    rows = max(1, BLOCK_BYTES // (4 * n_in))
    lead = g.op("Slice", g.op("Shape", x), g.ints([0]), g.ints([-1]))
    x2 = g.op("Reshape", x, g.ints([-1, n_in]))
    parts = []
    for a in range(0, n_out, rows):
        b = min(n_out, a + rows)
        block = g.op("Slice", w, g.runtime_int(a, [1]), g.runtime_int(b, [1]), g.ints([0]), name=f"{w_name}.rows")
        w32 = g.op("Cast", block, to=TensorProto.FLOAT, name=f"{w_name}.fp32")
        bias_b = None if bias is None else (bias if (a, b) == (0, n_out) else
                                             g.op("Slice", bias, g.ints([a]), g.ints([b]), g.ints([0])))
        parts.append(g.op("Gemm", x2, w32, *([bias_b] if bias_b is not None else []), transB=1,
                          name=f"{w_name}.gemm"))
    y2 = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=-1, name=f"{w_name}.blocks")
    return g.op("Reshape", y2, g.op("Concat", lead, g.ints([n_out]), axis=0))
