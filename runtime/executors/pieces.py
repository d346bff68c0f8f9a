"""What the graph executors (ONNX Runtime, TensorRT) share about the graph's fixed-capacity KV cache
(plugins/onnx/kv_cache.py): the cache's tensors and their row operations, right padding, and prefill chunks.

    cache = FixedCache.empty(specs, batch_size, zeros)      # specs: CacheSpec per past_* input of the graph
    for chunk in plan_chunks(ids, pos, max_chunk): ...      # calls of at most max_chunk tokens

Full layers' caches (`in_place`) are written by the graph into the very buffer passed as past_* (bind present_*
to the same memory); rings are bounded (window + sinks + 1 rows) and come back as new tensors, copied into
the cache rows the call covered. Row operations work on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CacheSpec:
    name: str                     # graph input, past_*
    shape: tuple[int, ...]        # without the batch axis
    in_place: bool                # full-attention K/V: present_* aliases past_*
    is_pos: bool                  # a ring's position tensor (-1 = empty)


def cache_specs(inputs, full_layers: set[int]) -> list[CacheSpec]:
    """(name, shape) of the graph's past_* inputs (shape[0] the batch) -> CacheSpecs. full_layers: the
    network's full-attention layer indices, whose K/V the graph writes in place."""
    specs = []
    for name, shape in inputs:
        if not name.startswith("past_"):
            continue
        dims = tuple(shape[1:])
        if not all(isinstance(d, int) for d in dims):
            raise ValueError(f"graph input {name} has shape {list(shape)}: the KV cache needs fixed capacities "
                             f"(re-export the graph with this version's plugins.onnx.export_onnx)")
        layer = name.rsplit("_", 1)[-1]
        in_place = name.startswith(("past_key_", "past_value_")) and int(layer) in full_layers
        specs.append(CacheSpec(name, dims, in_place, name.endswith("_pos")))
    return specs


@dataclass
class FixedCache:
    """The graph's cache tensors [batch_size, ...], row = sequence, and each row's length (highest position
    written + 1), so moving a row copies only its filled slots of the full layers."""
    batch_size: int
    specs: list[CacheSpec]
    tensors: dict = field(default_factory=dict)                  # past_* name -> array / tensor
    lengths: np.ndarray = None                                   # [batch_size] int64

    @classmethod
    def empty(cls, specs: list[CacheSpec], batch_size: int, alloc) -> "FixedCache":
        """alloc(shape, spec) -> a zero tensor (positions: -1)."""
        tensors = {s.name: alloc((batch_size, *s.shape), s) for s in specs}
        return cls(batch_size, specs, tensors, np.zeros(batch_size, np.int64))

    @property
    def capacity(self) -> int:
        """Rows of the full-attention caches (positions stay below capacity - max_chunk)."""
        return min((s.shape[1] for s in self.specs if s.in_place), default=1 << 62)

    def reset_rows(self, rows) -> None:
        """Rows become empty sequences: ring positions -1; full layers need nothing (slots above a sequence's
        position are never visible and are overwritten before they are)."""
        rows = list(rows)
        for s in self.specs:
            if s.is_pos:
                self.tensors[s.name][rows] = -1
        self.lengths[rows] = 0

    def copy_rows_from(self, src: "FixedCache", src_rows, dst_rows) -> None:
        src_rows, dst_rows = list(src_rows), list(dst_rows)
        if len(src_rows) != len(dst_rows):
            raise ValueError(f"copy_rows_from: {len(src_rows)} source rows for {len(dst_rows)} destination rows")
        if not src_rows:
            return
        n = int(src.lengths[src_rows].max())
        for s in self.specs:
            if s.in_place:
                moved = src.tensors[s.name][src_rows, :, :n]          # gathered first: src may be self
                self.tensors[s.name][dst_rows, :, :n] = moved
            else:
                self.tensors[s.name][dst_rows] = src.tensors[s.name][src_rows]
        self.lengths[dst_rows] = src.lengths[src_rows]

    def check_room(self, positions: np.ndarray, max_chunk: int) -> None:
        top = int(positions.max(initial=-1))
        room = self.capacity - max_chunk
        if top >= room:
            raise ValueError(f"position {top} is beyond the graph's KV capacity ({self.capacity} rows of which "
                             f"{max_chunk} are headroom for a call's padding: {room} positions); re-export with "
                             f"export_onnx(..., kv_capacity=N) for N >= context + {max_chunk}")


def right_padded(ids: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose valid tokens (position >= 0) do not start at column 0 are rolled left, because the graph
    writes a sequence's rows from its first position on. -> (ids, pos, shift per row)."""
    valid = pos >= 0
    shift = np.where(valid.any(1), np.argmax(valid, axis=1), 0)
    if shift.any():
        ids, pos = roll_rows(ids, -shift), roll_rows(pos, -shift)
    return ids, pos, shift


def roll_rows(a, shift: np.ndarray):
    T = a.shape[1]
    idx = (np.arange(T)[None, :] - shift[:, None]) % T
    return np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)


def plan_chunks(pos: np.ndarray, max_chunk: int) -> list[slice]:
    """Column ranges of at most max_chunk tokens; ranges where no row has a token are left out."""
    T = pos.shape[1]
    return [slice(c, min(c + max_chunk, T)) for c in range(0, T, max_chunk) if (pos[:, c:c + max_chunk] >= 0).any()]


def last_valid(pos: np.ndarray) -> np.ndarray:
    """Index of each row's last token (0 for a row with none)."""
    return np.maximum((pos >= 0).sum(axis=1) - 1, 0)
