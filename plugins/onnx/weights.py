"""Where the exporter reads canonical tensors from: a dict, or an open checkpoint read row slice by row slice.

    src = WeightSource(tensors)                  # {canonical name: tensor or packed quantized value}
    src = WeightSource(load_canonical(folder))   # lazily, `rows=` slices straight from the mmap

`chunks(name)` yields a tensor's rows in slices of about CHUNK_BYTES, so a writer never holds more than one
slice of one tensor; `value(name)` returns the whole canonical value (packed quantized values stay packed).
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch

CHUNK_BYTES = 64 << 20


class WeightSource:
    def __init__(self, src):
        self.src = src
        self._lazy = hasattr(src, "shape") and hasattr(src, "names") and not isinstance(src, Mapping)

    def __contains__(self, name: str) -> bool:
        return name in (self.src.names() if self._lazy else self.src)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self:
            raise KeyError(f"tensor {name!r} is required by the network but missing from the weights")
        return tuple(self.src.shape(name) if self._lazy else self.src[name].shape)

    def value(self, name: str, rows: slice | None = None):
        if name not in self:
            raise KeyError(f"tensor {name!r} is required by the network but missing from the weights")
        if self._lazy:
            return self.src.get(name, rows=rows)
        v = self.src[name]
        if rows is None:
            return v
        from checkpoint.convert.load import take_rows
        return take_rows(v, rows)

    def check(self, name: str, shape) -> None:
        got = self.shape(name)
        if tuple(got) != tuple(shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(got)}, the network expects {tuple(shape)}")

    def row_chunks(self, name: str, bytes_per_row: int) -> Iterator[slice]:
        n = self.shape(name)[0] if self.shape(name) else 1
        step = max(1, CHUNK_BYTES // max(1, bytes_per_row))
        for a in range(0, n, step):
            yield slice(a, min(n, a + step))

    def dense_chunks(self, name: str, quant: str = "bf16") -> Iterator[torch.Tensor]:
        """The tensor's rows as dense float tensors (quantized values dequantized as the reference runtime
        does it: plugins.reference.linear.dequantize)."""
        from plugins.reference.linear import dequantize
        shape = self.shape(name)
        row_elems = 1
        for s in shape[1:]:
            row_elems *= s
        if not shape:
            yield torch.as_tensor(self.value(name)).float().reshape(())
            return
        for rows in self.row_chunks(name, 4 * row_elems):
            v = self.value(name, rows)
            yield v if (quant == "bf16" and isinstance(v, torch.Tensor)) else dequantize(v, quant, name, torch.float32)
