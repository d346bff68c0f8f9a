"""Attention with learned sinks, the sliding window as an explicit mask, GQA, and the KV cache as graph I/O.

Decomposed (no fused Attention op), because TensorRT's attention layer has no sinks and its parser drops
ONNX Attention's window attribute:
  scores = (q * sm_scale) @ k^T + mask         q pre-scaled; fp32 whatever the compute dtype (the two matmuls
                                               in the compute dtype where the target has no fp32 GEMM)
  probs  = softmax([scores | sink])[..., :-1]  the learned per-head sink logit: an extra column, then dropped
  out    = probs @ v
The mask is computed once per forward and layer kind from token positions (never from buffer order):
a key at position j is visible from a query at i when 0 <= j <= i, and, on sliding layers, i - j < window.
Masked scores get -1e30 rather than -inf, so a row that sees nothing (padding) stays finite.

KV cache, per layer: `past_key_i` / `past_value_i` [b, kv_heads, rows, D] in, `present_*` out, of a fixed
capacity; where new rows are written and which rows are attended is plugins/onnx/kv_cache.py. Pad prompts on
the right (position -1 after a sequence's tokens): full layers write each sequence's rows from its first
position on.
"""

from __future__ import annotations

from onnx import TensorProto

from spec.network import Attention
from plugins.onnx.graph import Graph
from plugins.onnx.linear import emit_linear
from plugins.onnx.rope import apply_rope
from plugins.onnx.weights import WeightSource

MASKED = -1e30


def emit_mask(g: Graph, q_pos: str, k_pos: str, window: int | None, name: str, sink_tokens: int = 0) -> str:
    """q_pos [b, s], k_pos [b, S] int64 -> additive fp32 bias [b, 1, 1, s, S] (0 visible, -1e30 not).
    sink_tokens: StreamingLLM, keys at positions < sink_tokens stay visible beyond the window."""
    q = g.op("Unsqueeze", q_pos, g.ints([2]))
    k = g.op("Unsqueeze", k_pos, g.ints([1]))
    zero = g.ints(0)
    visible = g.op("And", g.op("GreaterOrEqual", k, zero), g.op("LessOrEqual", k, q))
    if window is not None:
        in_window = g.op("Less", g.op("Sub", q, k), g.ints(window))
        if sink_tokens:
            in_window = g.op("Or", in_window, g.op("Less", k, g.ints(sink_tokens)))
        visible = g.op("And", visible, in_window)
    bias = g.op("Where", visible, g.f32(0.0), g.f32(MASKED))
    return g.op("Unsqueeze", bias, g.ints([1, 2]), name=name)


def _cast32(g: Graph, x: str) -> str:
    return x if g.dtype == "float32" else g.op("Cast", x, to=TensorProto.FLOAT)


def _island_gemm_input(g: Graph, x: str) -> str:
    """x (fp32 or the compute dtype) as the island's matmuls take it: fp32, or the compute dtype where the
    target has no fp32 GEMM (g.island_gemm; its result is cast to fp32 at once)."""
    if g.island_gemm == "float32":
        return _cast32(g, x)
    return g.op("Cast", x, to=g.elem)


def emit_attention(g: Graph, h: str, a: Attention, weights: WeightSource, rope: tuple[str, str], cache,
                   past_k: str, past_v: str, out_k: str, out_v: str) -> str:
    """h [b, s, hidden] -> attention output [b, s, hidden]; the layer's cache (a plugins.onnx.kv_cache
    CacheKindGraph) writes the new rows into outputs `out_k`, `out_v` and says which keys to attend over."""
    Hq, Hkv, D = a.num_q_heads, a.num_kv_heads, a.head_dim
    G = Hq // Hkv
    qkv = emit_linear(g, h, a.qkv, weights)                                   # [b, s, (Hq + 2 Hkv) D]
    heads = g.op("Transpose", g.op("Reshape", qkv, g.ints([0, 0, Hq + 2 * Hkv, D])), perm=[0, 2, 1, 3])
    qk, v = g.op("Split", heads, g.ints([Hq + Hkv, Hkv]), axis=1, outputs=2)  # RoPE on q and k heads at once
    q, k = g.op("Split", apply_rope(g, qk, *rope, D), g.ints([Hq, Hkv]), axis=1, outputs=2)
    k_all, v_all, _, _ = cache.update(g, past_k, past_v, k, v, out_k, out_v)
    mask = cache.mask
    # q heads grouped under their kv head: [b, Hkv, G*s, D] against k [b, Hkv, S, D]
    qg = g.op("Reshape", _island_gemm_input(g, g.op("Mul", _cast32(g, q), g.f32(a.sm_scale))),
              g.ints([0, Hkv, -1, D]))
    scores = g.op("MatMul", qg, g.op("Transpose", _island_gemm_input(g, k_all), perm=[0, 1, 3, 2]), name="scores")
    scores = _cast32(g, scores) if g.island_gemm != "float32" else scores
    shape4 = g.op("Shape", scores)
    shape5 = g.op("Concat", g.op("Slice", shape4, g.ints([0]), g.ints([1])), g.ints([Hkv, G, -1]),
                  g.op("Slice", shape4, g.ints([3]), g.ints([4])), axis=0)
    scores5 = g.op("Add", g.op("Reshape", scores, shape5), mask)              # [b, Hkv, G, s, S]
    if a.learned_sinks:
        weights.check(a.sinks, (Hq,))
        sink = g.weight(a.sinks, (1, Hkv, G, 1, 1), lambda: [weights.value(a.sinks).float().reshape(1, Hkv, G, 1, 1)],
                        dtype="float32")
        sink_shape = g.op("Concat", g.op("Slice", g.op("Shape", scores5), g.ints([0]), g.ints([4])), g.ints([1]),
                          axis=0)
        with_sink = g.op("Concat", scores5, g.op("Expand", sink, sink_shape), axis=-1)
        probs = g.op("Slice", g.op("Softmax", with_sink, axis=-1), g.ints([0]), g.ints([-1]), g.ints([-1]),
                     name="sink_softmax")
    else:
        probs = g.op("Softmax", scores5, axis=-1)
    out = g.op("MatMul", _island_gemm_input(g, g.op("Reshape", probs, shape4)), _island_gemm_input(g, v_all),
               name="attn_v")                                                 # [b, Hkv, G*s, D]
    out = g.op("Transpose", g.op("Reshape", out, g.ints([0, Hq, -1, D])), perm=[0, 2, 1, 3])
    out = g.op("Reshape", out, g.ints([0, 0, Hq * D]))
    if g.dtype != "float32" and g.island_gemm == "float32":
        out = g.op("Cast", out, to=g.elem)
    return emit_linear(g, out, a.out, weights)
