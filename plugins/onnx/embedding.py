"""Token embedding: a Gather of the [vocab, hidden] table (written in row slices, never held whole)."""

from __future__ import annotations

from spec.network import Embedding
from plugins.onnx.graph import Graph
from plugins.onnx.stored import keeps_bf16, stored_embedding
from plugins.onnx.weights import WeightSource


def emit_embedding(g: Graph, input_ids: str, emb: Embedding, weights: WeightSource) -> str:
    """input_ids int64 [b, s] -> [b, s, hidden] in the graph's compute dtype."""
    weights.check(emb.weight, (emb.vocab_size, emb.hidden_size))
    if keeps_bf16(g, (emb,), weights):          # the packed CPU lowering: the bf16 table as stored, rows cast after the Gather
        return stored_embedding(g, input_ids, emb, weights)
    table = g.weight(emb.weight, (emb.vocab_size, emb.hidden_size),
                     lambda: weights.dense_chunks(emb.weight, emb.quant))
    return g.op("Gather", table, input_ids, axis=0, name="embed")
