"""The KV cache as graph inputs and outputs, one per cache kind (spec.network.CacheKind, the key the reference
runtime's KV-cache groups use too).

- full layers: `past_full_pos` [b, past]; present = concat(past, new), growing by the chunk each call;
- sliding layers: `past_window{W}_pos` [b, W]; present = the last W rows of concat(past, new);
- sliding layers with S StreamingLLM sink tokens: `past_window{W}_sink{S}_pos` [b, S + W]; rows [0, S) hold
  positions 0..S-1 (found by position among past and new rows, GatherND per sequence), rows [S, S + W) the
  last W rows, where a row whose position is < S is marked empty (it lives in the sink rows).
A position tensor travels per kind beside the keys (-1 = empty); masks are computed from it, so row order
never matters and memory is bounded by S + W rows on sliding layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx import TensorProto

from spec.network import CacheKind
from plugins.onnx.attention import emit_mask
from plugins.onnx.graph import Graph

INT_MAX = np.iinfo(np.int64).max


def pos_name(kind: CacheKind) -> str:
    if kind.full:
        return "past_full_pos"
    return f"past_window{kind.window}_pos" if not kind.sink_tokens else \
        f"past_window{kind.window}_sink{kind.sink_tokens}_pos"


def present_name(name: str) -> str:
    return "present_" + name.removeprefix("past_")


@dataclass
class CacheKindGraph:
    """One cache kind in the graph: its rows, its mask, and how a layer of it keeps its rows."""
    rows: int | str                   # rows of past_* inputs ("past" for full layers)
    out_rows: int | str
    mask: str                         # additive fp32 bias [b, 1, 1, s, S]
    keep: Callable[[Graph, str], str]  # concat(past, new) [b, h, L, D] -> present [b, h, rows, D]


def emit_cache_kind(g: Graph, kind: CacheKind, pos: str) -> CacheKindGraph:
    """Declare the kind's position input/output, its mask, and how a layer keeps its rows."""
    window, sinks = kind.window, kind.sink_tokens
    rows = "past" if kind.full else kind.slots
    past_pos = g.input(pos_name(kind), "int64", ["batch", rows])
    k_pos = g.op("Concat", past_pos, pos, axis=1, name=f"{pos_name(kind)}_keys")
    mask = emit_mask(g, pos, k_pos, window, f"mask_{pos_name(kind)}", sinks)
    if kind.full:
        g.output(k_pos, present_name(pos_name(kind)), "int64", ["batch", "total"])
        return CacheKindGraph(rows, "total", mask, lambda g, rows_all: rows_all)
    last = [g.ints([-window]), g.ints([INT_MAX]), g.ints([2])]
    win_pos = g.op("Slice", k_pos, g.ints([-window]), g.ints([INT_MAX]), g.ints([1]))
    if not sinks:
        g.output(win_pos, present_name(pos_name(kind)), "int64", ["batch", rows])
        return CacheKindGraph(rows, rows, mask, lambda g, rows_all: g.op("Slice", rows_all, *last))
    # Sink rows: for j < S, the row holding position j (ArgMax of a one-hot match), -1 where not seen yet.
    j = g.ints(np.arange(sinks))
    match = g.op("Cast", g.op("Equal", g.op("Unsqueeze", k_pos, g.ints([-1])), j), to=TensorProto.INT32)  # [b, L, S]
    idx = g.op("ArgMax", match, axis=1, keepdims=0)                                         # [b, S]
    found = g.op("Cast", g.op("ReduceMax", match, g.ints([1]), keepdims=0), to=TensorProto.BOOL)
    sink_pos = g.op("Where", found, j, g.ints(-1))
    win_pos = g.op("Where", g.op("Less", win_pos, g.ints(sinks)), g.ints(-1), win_pos)
    g.output(g.op("Concat", sink_pos, win_pos, axis=1), present_name(pos_name(kind)), "int64", ["batch", rows])
    gather_idx = g.op("Unsqueeze", idx, g.ints([-1]))                                      # [b, S, 1]

    def keep(g: Graph, rows_all: str) -> str:
        by_row = g.op("Transpose", rows_all, perm=[0, 2, 1, 3])                            # [b, L, h, D]
        sink_rows = g.op("GatherND", by_row, gather_idx, batch_dims=1)                     # [b, S, h, D]
        sink_rows = g.op("Transpose", sink_rows, perm=[0, 2, 1, 3])
        return g.op("Concat", sink_rows, g.op("Slice", rows_all, *last), axis=2)
    return CacheKindGraph(rows, rows, mask, keep)
