"""Full-attention layers as one ONNX Runtime `com.microsoft.GroupQueryAttention` node: the CPU lowerings' form
(plugins.onnx.kv_cache.FULL_FORMS), so a decode step reads the filled rows of the in-place cache where they lie
instead of slicing them out and running the decomposed MatMul/Softmax chain over the copy.

What the node is given, and why it computes exactly what the decomposed form does (checked against
transformers and the reference runtime in tests/plugins/test_onnx_graph.py; ONNX Runtime >= 1.32's schema):
- q [b, s, Hq*D], k, v [b, s, Hkv*D] after RoPE (do_rotary=0: the YaRN tables stay ours), `scale` = the
  network's sm_scale; GQA grouping q head h under kv head h // (Hq / Hkv), as the decomposed form's reshape.
- past_key/past_value and present_key/present_value: the layer's [b, Hkv, C, D] cache; bound to one buffer
  (runtime/executors/onnxruntime.py binds them so) the node writes the new rows in place.
- `query_seqlens` [b] = a row's tokens in the call (positions >= 0, right-padded), `seqlens_k` [b] = its highest
  position (rows then hold positions [0, seqlens_k + 1)); causal attention over those, so the key at slot j is
  seen from the query at position i exactly when j <= i, the decomposed mask's rule. Padding rows never enter
  the cache; a row that sits the call out (all positions -1) has query_seqlens 0 and leaves its rows untouched.
- `total_sequence_length` = the batch's highest position + 1 (at least the chunk width): the bound the kernel
  checks and sizes its score buffer by, so a step costs the context it reads, not the capacity.
- `head_sink` [Hq]: the learned sink logit joins each head's softmax denominator with no value, the extra
  softmax column the decomposed form appends and drops. Omitted when the network has no learned sinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from spec.network import Attention
from plugins.onnx.graph import Graph
from plugins.onnx.weights import WeightSource

MS_DOMAIN = "com.microsoft"
# ONNX Runtime's CPU kernel refuses other head sizes at run time ("head_size must be a multiple of 8"); such
# layers keep the decomposed form (plugins.onnx.kv_cache._emit_full_gqa), over the same in-place buffer.
HEAD_DIM_MULTIPLE = 8


def supports(a: Attention) -> bool:
    return a.head_dim % HEAD_DIM_MULTIPLE == 0


@dataclass(frozen=True)
class SequenceLengths:
    """The node's length inputs, computed once per graph from position_ids and shared by the full layers."""
    seqlens_k: str        # int32 [b]: highest position (>= 0)
    total: str            # int32 scalar: max over the batch of seqlens_k + 1, and at least the chunk width
    query_lens: str       # int32 [b]: tokens of each row in this call


def emit_sequence_lengths(g: Graph, pos: str) -> SequenceLengths:
    """pos int64 [b, s] (right-padded, -1 = padding) -> the GroupQueryAttention length inputs."""
    top = g.op("Max", g.op("ReduceMax", pos, g.ints([1]), keepdims=0), g.ints(0))           # [b]
    seqlens_k = g.op("Cast", top, to=TensorProto.INT32, name="gqa_seqlens_k")
    width = g.op("Squeeze", g.op("Slice", g.op("Shape", pos), g.ints([1]), g.ints([2])), g.ints([0]))
    total = g.op("Max", g.op("Add", g.op("ReduceMax", top, keepdims=0), g.ints(1)), width)
    total = g.op("Cast", total, to=TensorProto.INT32, name="gqa_total_sequence_length")
    valid = g.op("Cast", g.op("GreaterOrEqual", pos, g.ints(0)), to=TensorProto.INT32)
    query_lens = g.op("ReduceSum", valid, g.ints([1]), keepdims=0, name="gqa_query_seqlens")
    g.opset_imports[MS_DOMAIN] = 1
    return SequenceLengths(seqlens_k, total, query_lens)


def emit_gqa_attention(g: Graph, lengths: SequenceLengths, a: Attention, weights: WeightSource, q: str, k: str,
                       v: str, past_k: str, past_v: str, out_k: str, out_v: str) -> str:
    """q [b, Hq, s, D], k, v [b, Hkv, s, D] (compute dtype, after RoPE) -> [b, s, Hq * D]; writes present_*
    (outputs out_k, out_v: the cache with the call's rows written)."""
    Hq, Hkv, D = a.num_q_heads, a.num_kv_heads, a.head_dim

    def rows(x: str, heads: int) -> str:                       # [b, H, s, D] -> [b, s, H * D]
        return g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 1, 3]), g.ints([0, 0, heads * D]))
    sink = None
    if a.learned_sinks:
        weights.check(a.sinks, (Hq,))
        sink = g.weight(a.sinks + ".head_sink", (Hq,), lambda: [weights.value(a.sinks).float().reshape(Hq)])
    out, _, _ = g.op("GroupQueryAttention", rows(q, Hq), rows(k, Hkv), rows(v, Hkv), past_k, past_v,
                     lengths.seqlens_k, lengths.total, None, None, None, None, sink, None, None, None, None,
                     lengths.query_lens, outputs=[g.fresh("gqa_out"), out_k, out_v], name="gqa",
                     domain=MS_DOMAIN, num_heads=Hq, kv_num_heads=Hkv, scale=float(a.sm_scale))
    return out
