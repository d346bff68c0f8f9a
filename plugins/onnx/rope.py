"""YaRN rotary embedding (half-split) with cos/sin tables baked from the network's rope parameters.

The tables come from the reference implementation (plugins.reference.rope), one row per position up to
the network's max_position_embeddings, in the full-width form (cos|cos, -sin|sin), so the graph applies
x * cos + (x2|x1) * sin: a Gather, a Concat and three elementwise ops.
"""

from __future__ import annotations

import torch

from spec.network import Rope
from plugins.onnx.graph import Graph
from plugins.reference.rope import rope_cos_sin, rope_frequencies, rope_full_tables


def rope_tables(rope: Rope, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (cos_full, sin_signed) [positions, head_dim]."""
    return rope_full_tables(*rope_cos_sin(torch.arange(positions), *rope_frequencies(rope)))


def emit_rope_tables(g: Graph, rope: Rope, key: str, positions: str, max_positions: int) -> tuple[str, str]:
    """positions int64 [b, s] (clamped >= 0) -> (cos, sin) [b, 1, s, head_dim], named `key`: emitted once per
    distinct Rope and shared by the layers that have it."""
    cos_t = g.weight(key + ".cos", (max_positions, rope.head_dim), lambda: [rope_tables(rope, max_positions)[0]])
    sin_t = g.weight(key + ".sin", (max_positions, rope.head_dim), lambda: [rope_tables(rope, max_positions)[1]])
    axis1 = g.ints([1])
    cos = g.op("Unsqueeze", g.op("Gather", cos_t, positions, axis=0), axis1, name=key + "_cos")
    sin = g.op("Unsqueeze", g.op("Gather", sin_t, positions, axis=0), axis1, name=key + "_sin")
    return cos, sin


def apply_rope(g: Graph, x: str, cos: str, sin: str, head_dim: int) -> str:
    """x [b, heads, s, D] -> rotated: x * (cos|cos) + (x2|x1) * (-sin|sin)."""
    half = g.ints([head_dim // 2, head_dim // 2])
    x1, x2 = g.op("Split", x, half, axis=-1, outputs=2)
    rolled = g.op("Concat", x2, x1, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rolled, sin), name="rope")
