"""spec.network.Network + canonical weights -> one ONNX graph for prefill and decode.

    saved = export_onnx(network, weights, "model.onnx", dtype="float32")   # weights: dict or load_canonical(...)
    saved.path, saved.data_files ({external data file: sha256}, empty when the weights are inline)

Graph inputs: input_ids, position_ids int64 [batch, seq] (position -1 = padding), the slot positions of each
cache kind (`past_full_pos` [batch, past], `past_window{W}_pos` [batch, W]) and per layer `past_key_i`,
`past_value_i` [batch, kv_heads, past | W, head_dim]. Outputs: logits float32 [batch, seq, vocab], and the
`present_*` counterparts of every cache input. Prefill is a call with seq = prompt length; decode, seq = 1;
an empty cache has past = 0 rows for full layers and W rows at position -1 for sliding layers.
See plugins/onnx/attention.py for the cache and masks.

`faults` breaks the graph on purpose (negative controls for tests): FAULTS names what each does.
"""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto

from spec.network import MoE, Network
from plugins.onnx.attention import emit_attention, emit_mask
from plugins.onnx.embedding import emit_embedding
from plugins.onnx.graph import Graph, SavedGraph
from plugins.onnx.linear import emit_linear
from plugins.onnx.moe import emit_dense_mlp, emit_moe
from plugins.onnx.norm import emit_rmsnorm
from plugins.onnx.rope import emit_rope_tables, rope_key
from plugins.onnx.weights import WeightSource

FAULTS = {
    "no_sinks": "attention without the learned sink column",
    "window_off": "sliding layers attend like full layers (causal mask only)",
    "unclamped_swiglu": "SwiGLU without its clamps",
    "no_router_bias": "router logits without the router bias",
}

FULL_POS = "past_full_pos"


def window_pos_name(window: int) -> str:
    return f"past_window{window}_pos"


def present_name(name: str) -> str:
    return "present_" + name.removeprefix("past_")


def build_graph(network: Network, weights, dtype: str = "float32", faults=()) -> Graph:
    bad = set(faults) - set(FAULTS)
    if bad:
        raise ValueError(f"unknown faults {sorted(bad)}; known: {sorted(FAULTS)}")
    weights = weights if isinstance(weights, WeightSource) else WeightSource(weights)
    g = Graph(network.name or "gpt-oss", dtype)
    ids = g.input("input_ids", "int64", ["batch", "seq"])
    pos = g.input("position_ids", "int64", ["batch", "seq"])
    pos0 = g.op("Max", pos, g.ints(0), name="positions_clamped")     # padding rows read table row 0
    x = emit_embedding(g, ids, network.embedding, weights)

    # One slot-position tensor and one mask per cache kind, shared by that kind's layers.
    masks, ropes = {}, {}
    for layer in network.layers:
        a = layer.attention
        if a.sink_tokens:
            raise NotImplementedError(f"layers[{layer.index}]: StreamingLLM sink tokens ({a.sink_tokens}) are not "
                                      f"exported to ONNX yet; export a network with sink_tokens = 0")
        kind = a.window if a.kind == "sliding" else None
        if kind not in masks:
            if kind is None:
                past_pos = g.input(FULL_POS, "int64", ["batch", "past"])
                k_pos = g.op("Concat", past_pos, pos, axis=1, name="full_key_pos")
                g.output(k_pos, present_name(FULL_POS), "int64", ["batch", "total"])
            else:
                past_pos = g.input(window_pos_name(kind), "int64", ["batch", kind])
                k_pos = g.op("Concat", past_pos, pos, axis=1, name=f"window{kind}_key_pos")
                kept = g.op("Slice", k_pos, g.ints([-kind]), g.ints([2 ** 62]), g.ints([1]))
                g.output(kept, present_name(window_pos_name(kind)), "int64", ["batch", kind])
            mask_window = None if "window_off" in faults else kind
            masks[kind] = emit_mask(g, pos, k_pos, mask_window, f"mask_{kind or 'full'}")
        key = rope_key(a.rope)
        if key not in ropes:
            ropes[key] = emit_rope_tables(g, a.rope, pos0, network.max_position_embeddings)

    for layer in network.layers:
        a, i = layer.attention, layer.index
        rows = a.window if a.kind == "sliding" else "past"
        kv_shape = ["batch", a.num_kv_heads, rows, a.head_dim]
        past_k = g.input(f"past_key_{i}", dtype, kv_shape)
        past_v = g.input(f"past_value_{i}", dtype, kv_shape)
        h = emit_rmsnorm(g, x, layer.attn_norm, weights)
        attn, present_k, present_v = emit_attention(
            g, h, a, weights, ropes[rope_key(a.rope)], masks[a.window if a.kind == "sliding" else None],
            past_k, past_v, use_sinks="no_sinks" not in faults)
        out_rows = a.window if a.kind == "sliding" else "total"
        g.output(present_k, f"present_key_{i}", dtype, ["batch", a.num_kv_heads, out_rows, a.head_dim])
        g.output(present_v, f"present_value_{i}", dtype, ["batch", a.num_kv_heads, out_rows, a.head_dim])
        x = g.op("Add", x, attn, name=f"layer{i}_attn_residual")
        h = emit_rmsnorm(g, x, layer.mlp_norm, weights)
        clamp = "unclamped_swiglu" not in faults
        if isinstance(layer.mlp, MoE):
            y = emit_moe(g, h, layer.mlp, weights, router_bias="no_router_bias" not in faults, clamp=clamp)
        else:
            y = emit_dense_mlp(g, h, layer.mlp, weights, clamp=clamp)
        x = g.op("Add", x, y, name=f"layer{i}_mlp_residual")

    x = emit_rmsnorm(g, x, network.final_norm, weights)
    logits = emit_linear(g, x, network.lm_head, weights)
    if dtype != "float32":
        logits = g.op("Cast", logits, to=TensorProto.FLOAT)
    g.output(logits, "logits", "float32", ["batch", "seq", network.vocab_size])
    return g


def export_onnx(network: Network, weights, path: str | Path, *, dtype: str = "float32", faults=(),
                external: bool | None = None) -> SavedGraph:
    """Build and write the graph. external=None: weights inline below 1.8 GB, else one external data file
    written tensor by tensor (its sha256 in the result)."""
    g = build_graph(network, weights, dtype, faults)
    return g.save(path, external=external)
