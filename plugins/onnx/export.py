"""spec.network.Network + canonical weights -> one ONNX graph for prefill and decode.

    saved = export_onnx(network, weights, "model.onnx", dtype="float32")   # weights: dict or load_canonical(...)
    export_onnx(network, weights, path, dtype="bfloat16")   # a GPU graph: spec.capabilities.graph_dtype(sm)
    saved.path, saved.data_files ({external data file: sha256}, empty when the weights are inline)
    export_onnx(network, ck, path, share=CheckpointBytes(folder))   # weights equal to the checkpoint's point
                                                                    # into its shards (plugins/onnx/shared_weights.py)
    export_onnx(network, weights, path, lowering="onnxruntime-cpu")       # the form ONNX Runtime's CPU runs

Graph inputs: input_ids, position_ids int64 [batch, seq] (right-padded: position -1 after a sequence's tokens,
or all -1 for a sequence that sits the call out), per sliding cache kind its ring's positions
(`past_window{W}_pos`, `past_window{W}_sink{S}_pos` [batch, S + W + 1]) and per layer `past_key_i`,
`past_value_i` [batch, kv_heads, kv_capacity | S + W + 1, head_dim]. Outputs: logits float32 [batch, seq, vocab]
and the `present_*` counterpart of every cache input, the same shape: full layers' present_* are the past_*
buffers written in place (TensorScatter; bind both to one buffer), rings' are the next step's ring. Prefill is
a call with seq = a chunk of the prompt (at most DEFAULT_MAX_CHUNK, runtime.executors.pieces); decode, seq = 1;
an empty cache is zeros with every ring position -1. plugins/onnx/kv_cache.py writes the rows, attention.py
computes the masks.

`lowering` (plugins.onnx.graph.LOWERINGS) says how quantized ops are written: "tensorrt" (the default; FP4/FP8
Q/DQ as TensorRT imports them) or "onnxruntime-cpu" (what ONNX Runtime's CPU provider runs; plugins/onnx/fp4.py
says where the two differ). Everything the graph computes comes from the network and the weights: a broken
variant (a negative control) is a network or weight edit (regression.faults), never a switch here.
"""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto

from spec.network import MoE, Network
from plugins.onnx.attention import emit_attention
from plugins.onnx.embedding import emit_embedding
from plugins.onnx.graph import TENSORRT, Graph, SavedGraph
from plugins.onnx.kv_cache import DEFAULT_MAX_CHUNK, emit_cache_kind
from plugins.onnx.linear import emit_linear
from plugins.onnx.moe import emit_dense_mlp, emit_moe
from plugins.onnx.norm import emit_rmsnorm
from plugins.onnx.rope import emit_rope_tables
from plugins.onnx.weights import WeightSource


def build_graph(network: Network, weights, dtype: str = "float32", lowering: str = TENSORRT,
                kv_capacity: int | None = None, island_gemm: str = "float32") -> Graph:
    """kv_capacity: rows of the full-attention caches (default: the network's max_position_embeddings plus
    DEFAULT_MAX_CHUNK, the headroom a call's padding rows may be written to; plugins/onnx/kv_cache.py).
    island_gemm: the dtype of the GEMMs inside the fp32 islands (spec.capabilities.island_gemm_dtype)."""
    capacity = kv_capacity or network.max_position_embeddings + DEFAULT_MAX_CHUNK
    weights = weights if isinstance(weights, WeightSource) else WeightSource(weights)
    g = Graph(network.name or "gpt-oss", dtype, lowering, island_gemm)
    ids = g.input("input_ids", "int64", ["batch", "seq"])
    pos = g.input("position_ids", "int64", ["batch", "seq"])
    pos0 = g.op("Max", pos, g.ints(0), name="positions_clamped")     # padding rows read table row 0
    x = emit_embedding(g, ids, network.embedding, weights)

    # One slot-position tensor, one mask and one row policy per cache kind, one pair of RoPE tables per Rope:
    # shared by the layers that have them (spec.network keys both).
    kinds, ropes = {}, {}
    for layer in network.layers:
        a = layer.attention
        if a.cache_kind not in kinds:
            kinds[a.cache_kind] = emit_cache_kind(g, a.cache_kind, pos, capacity)
        if a.rope not in ropes:
            ropes[a.rope] = emit_rope_tables(g, a.rope, f"rope{len(ropes)}", pos0, network.max_position_embeddings)

    for layer in network.layers:
        a, i = layer.attention, layer.index
        kind = kinds[a.cache_kind]
        past_k = g.input(f"past_key_{i}", dtype, ["batch", a.num_kv_heads, kind.rows, a.head_dim])
        past_v = g.input(f"past_value_{i}", dtype, ["batch", a.num_kv_heads, kind.rows, a.head_dim])
        h = emit_rmsnorm(g, x, layer.attn_norm, weights)
        attn = emit_attention(g, h, a, weights, ropes[a.rope], kind, past_k, past_v, f"present_key_{i}",
                              f"present_value_{i}")
        for out in (f"present_key_{i}", f"present_value_{i}"):
            g.outputs_declared(out, dtype, ["batch", a.num_kv_heads, kind.rows, a.head_dim])
        x = g.op("Add", x, attn, name=f"layer{i}_attn_residual")
        h = emit_rmsnorm(g, x, layer.mlp_norm, weights)
        y = emit_moe(g, h, layer.mlp, weights) if isinstance(layer.mlp, MoE) else emit_dense_mlp(g, h, layer.mlp,
                                                                                                  weights)
        x = g.op("Add", x, y, name=f"layer{i}_mlp_residual")

    x = emit_rmsnorm(g, x, network.final_norm, weights)
    logits = emit_linear(g, x, network.lm_head, weights)
    if dtype != "float32":
        logits = g.op("Cast", logits, to=TensorProto.FLOAT)
    g.output(logits, "logits", "float32", ["batch", "seq", network.vocab_size])
    return g


def export_onnx(network: Network, weights, path: str | Path, *, dtype: str = "float32", lowering: str = TENSORRT,
                external: bool | None = None, kv_capacity: int | None = None,
                island_gemm: str = "float32", share=None) -> SavedGraph:
    """Build and write the graph. external=None: weights inline below 1.8 GB, else one external data file
    written tensor by tensor (its sha256 in the result). kv_capacity: as build_graph. dtype: the compute
    dtype; island_gemm: the dtype of the GEMMs inside its fp32 islands (spec.capabilities.island_gemm_dtype;
    float32 unless the target lacks fp32 GEMMs). share: a plugins.onnx.shared_weights.CheckpointBytes over the
    checkpoint the weights come from: initializers equal to a stored tensor point into its shard (hard-linked
    beside the graph) instead of being written again."""
    return build_graph(network, weights, dtype, lowering, kv_capacity, island_gemm).save(path, external=external,
                                                                                         share=share)
