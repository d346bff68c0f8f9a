"""The KV cache as graph inputs and outputs of a fixed capacity, one layout per cache kind (spec.network.CacheKind,
the key the reference runtime's KV-cache groups use too). No cache tensor grows or is concatenated per step.

- full layers: `past_key_i` [b, kv, C, D] with C = the export's `kv_capacity` (static). Slot = position. The new
  rows are written in place by ONNX `TensorScatter` (opset 24, linear mode; TensorRT imports it as
  IKVCacheUpdateLayer, ONNX Runtime writes into the bound buffer when present_* and past_* share it), at each
  sequence's first position, then attention reads the written tensor sliced to `used` = highest position + 1
  rows (never the whole capacity). No position tensor: a sequence's positions are contiguous from 0, so slot j
  is filled and visible from a query at position i exactly when j <= i; rows above a sequence's position hold
  stale or padding keys the mask never shows (they are overwritten before they become visible).
  A sequence that takes no part in a call (all positions -1) writes its T padding rows at [C - T, C): the
  executor keeps positions below C - max_chunk (runtime.executors.pieces), so nothing live is there.
- sliding layers: a ring of R = S + W + 1 rows (`past_window{W}[_sink{S}]_pos` [b, R] holds each row's
  position, -1 = empty). Position p lives at ring row p for p < S (StreamingLLM sink tokens) and at
  S + (p - S) mod W beyond; row R - 1 is a scratch row that every token not kept (padding, and a chunk's
  tokens more than W behind its last) is sent to, always at position -1, so no two kept tokens share a row.
  A chunk attends over [past ring ; its own new keys] (masks from positions, so ring order never matters and
  the window is exact past the wrap), then the kept rows are scattered (ScatterElements) into present_*, a
  new tensor of the ring's bounded size: writing first would overwrite keys the chunk's earlier queries need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx import TensorProto

from spec.network import CacheKind
from plugins.onnx.attention import emit_mask
from plugins.onnx.graph import Graph

DEFAULT_MAX_CHUNK = 512  # tokens per call the executors send at most (prefill chunks); headroom of full caches
SCRATCH_ROWS = 1          # ring rows past S + W: where tokens that are not kept are written


def pos_name(kind: CacheKind) -> str:
    """The position input of a ring kind (full layers have none: slot = position)."""
    if kind.full:
        raise ValueError("full-attention layers have no position input (slot = position)")
    return f"past_window{kind.window}_pos" if not kind.sink_tokens else \
        f"past_window{kind.window}_sink{kind.sink_tokens}_pos"


def present_name(name: str) -> str:
    return "present_" + name.removeprefix("past_")


def ring_rows(kind: CacheKind) -> int:
    return kind.slots + SCRATCH_ROWS


def ring_row_of(positions: np.ndarray, kind: CacheKind) -> np.ndarray:
    """Where a kept position lives in its ring (the graph's rule, for executors and tests)."""
    S, W = kind.sink_tokens, kind.window
    return np.where(positions < S, positions, S + (positions - S) % W)


@dataclass
class CacheKindGraph:
    """One cache kind in the graph: its rows, and how a layer of it writes new rows and picks what to attend."""
    rows: int                                        # rows of the past_* inputs
    # (past_k, past_v, k_new, v_new, out names) -> (keys, values to attend over, present_k, present_v)
    update: Callable[[Graph, str, str, str, str, str, str], tuple[str, str, str, str]]
    mask: str                                        # additive fp32 bias [b, 1, 1, s, keys]


def emit_cache_kind(g: Graph, kind: CacheKind, pos: str, capacity: int) -> CacheKindGraph:
    return _emit_full(g, pos, capacity) if kind.full else _emit_ring(g, kind, pos)


def _emit_full(g: Graph, pos: str, capacity: int) -> CacheKindGraph:
    # used = highest position in the call + 1 (>= 1); the keys attended are slots [0, used).
    used = g.op("Add", g.op("ReduceMax", pos, keepdims=0), g.ints(1))
    used = g.op("Max", g.op("Unsqueeze", used, g.ints([0])), g.ints([1]), name="full_used")    # [1]
    slots = g.op("Unsqueeze", g.op("Range", g.ints(0), g.op("Squeeze", used, g.ints([0])), g.ints(1)),
                 g.ints([0]))                                                                # [1, used]
    mask = emit_mask(g, pos, slots, None, "mask_full")
    first = g.op("Slice", pos, g.ints([0]), g.ints([1]), g.ints([1]))                        # [b, 1]
    seq = g.op("Slice", g.op("Shape", pos), g.ints([1]), g.ints([2]))                        # [1] = T
    idle = g.op("Sub", g.ints([capacity]), seq)                                              # C - T
    write_at = g.op("Squeeze", g.op("Where", g.op("Less", first, g.ints(0)), idle, first), g.ints([1]),
                    name="full_write_index")                                                 # [b]

    def update(g: Graph, past_k, past_v, k_new, v_new, out_k, out_v):
        present = []
        for past, new, out in ((past_k, k_new, out_k), (past_v, v_new, out_v)):
            present.append(g.op("TensorScatter", past, new, write_at, outputs=[out], axis=2, mode="linear"))
        keys, values = (g.op("Slice", t, g.ints([0]), used, g.ints([2])) for t in present)
        return keys, values, present[0], present[1]
    g.require_opset(24)
    return CacheKindGraph(capacity, update, mask)


def _emit_ring(g: Graph, kind: CacheKind, pos: str) -> CacheKindGraph:
    S, W = kind.sink_tokens, kind.window
    R = ring_rows(kind)
    name = pos_name(kind)
    past_pos = g.input(name, "int64", ["batch", R])
    k_pos = g.op("Concat", past_pos, pos, axis=1, name=f"{name}_keys")
    mask = emit_mask(g, pos, k_pos, W, f"mask_{name}", S)
    # Kept: real tokens that are sinks or within W of the chunk's last position; the rest go to the scratch row.
    last = g.op("ReduceMax", pos, g.ints([1]), keepdims=1)                                   # [b, 1]
    kept = g.op("And", g.op("GreaterOrEqual", pos, g.ints(0)),
                g.op("Greater", pos, g.op("Sub", last, g.ints(W))))
    if S:
        kept = g.op("And", g.op("GreaterOrEqual", pos, g.ints(0)),
                    g.op("Or", kept, g.op("Less", pos, g.ints(S))))
        ring = g.op("Where", g.op("Less", pos, g.ints(S)), pos,
                    g.op("Add", g.op("Mod", g.op("Sub", pos, g.ints(S)), g.ints(W)), g.ints(S)))
    else:
        ring = g.op("Mod", g.op("Max", pos, g.ints(0)), g.ints(W))
    row = g.op("Where", kept, ring, g.ints(R - 1), name=f"{name}_ring_row")                 # [b, T]
    g.op("ScatterElements", past_pos, row, g.op("Where", kept, pos, g.ints(-1)), axis=1,
         outputs=[present_name(name)])
    g.outputs_declared(present_name(name), "int64", ["batch", R])
    rows4 = g.op("Unsqueeze", row, g.ints([1, 3]))                                          # [b, 1, T, 1]

    def update(g: Graph, past_k, past_v, k_new, v_new, out_k, out_v):
        keys = g.op("Concat", past_k, k_new, axis=2, name="keys")
        values = g.op("Concat", past_v, v_new, axis=2, name="values")
        idx = g.op("Expand", rows4, g.op("Shape", k_new))
        present_k = g.op("ScatterElements", past_k, idx, k_new, axis=2, outputs=[out_k])
        present_v = g.op("ScatterElements", past_v, idx, v_new, axis=2, outputs=[out_v])
        return keys, values, present_k, present_v
    return CacheKindGraph(R, update, mask)
