"""safetensors files: our own bounded, validated header parse, mmap reads, and a streaming writer.

Why not the `safetensors` package: it loads a whole file's header without size limits and reports a
corrupt file as an opaque Rust error; we need messages that name the file, the tensor and the fix, and
reads of a row range of one tensor (so a 4 GB expert tensor converts in 64 MB pieces).

Layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data
buffer; offsets are relative to the buffer, which the tensors must tile without overlap.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from checkpoint.errors import CheckpointError

# A real header is about 100 bytes per tensor; 120b has ~700 tensors (under 100 KB). Anything near this
# bound is not a checkpoint, and parsing it would only exhaust memory (a JSON object costs ~10x its text).
MAX_HEADER_BYTES = 16 * 1024 * 1024
# The same bound over all shards of one checkpoint together, so many shards cannot multiply it.
MAX_TOTAL_HEADER_BYTES = 32 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("BF16", "F16", "F32")


def itemsize(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str            # safetensors spelling: "BF16", "U8", ...
    shape: tuple[int, ...]
    begin: int            # absolute file offsets of the data
    end: int
    path: Path

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _reject_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


class SafetensorsFile:
    """One .safetensors file, header validated on open, tensors read on demand from an mmap."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None
        self._mmap = None
        try:
            self._file = open(self.path, "rb")
            self.size = os.fstat(self._file.fileno()).st_size
            self.infos, self.metadata = self._parse_header()
            if self.size:
                self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            self.close()
            raise self._fail(f"cannot be read ({e.strerror or e})", "check the file, its permissions and the disk") from None
        except BaseException:
            self.close()
            raise

    # -- header -------------------------------------------------------------------------------------
    def _fail(self, what: str, fix: str = "re-download or re-export this file") -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}; fix: {fix}")

    def _parse_header(self) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        if self.size < 8:
            raise self._fail(f"truncated: {self.size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", self._file.read(8))
        self.header_bytes = n
        if n > MAX_HEADER_BYTES:
            raise self._fail(f"header length {n} bytes is absurd (limit {MAX_HEADER_BYTES}); "
                             f"this is not a safetensors file or it is corrupt")
        if 8 + n > self.size:
            raise self._fail(f"truncated or corrupt: header length {n} runs past the end of the file "
                             f"({self.size} bytes)")
        raw = self._file.read(n)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._fail(f"corrupt header, not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(header, dict):
            raise self._fail("corrupt header: the JSON is not an object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise self._fail("corrupt header: __metadata__ is not an object")
        data_start, data_size = 8 + n, self.size - 8 - n
        infos: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            infos[name] = self._parse_entry(name, entry, data_start, data_size)
        # Tensors must not overlap: sort by begin and compare neighbours.
        spans = sorted(infos.values(), key=lambda t: (t.begin, t.end))
        for a, b in zip(spans, spans[1:]):
            if b.begin < a.end:
                raise self._fail(f"corrupt header: tensors {a.name!r} (bytes {a.begin - data_start}.."
                                 f"{a.end - data_start}) and {b.name!r} (bytes {b.begin - data_start}.."
                                 f"{b.end - data_start}) overlap")
        return infos, metadata

    def _parse_entry(self, name, entry, data_start, data_size) -> TensorInfo:
        if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"} \
                or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise self._fail(f"corrupt header entry for tensor {name!r}: {str(entry)[:200]}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise self._fail(f"tensor {name!r} has unknown dtype {dtype!r}",
                             f"use one of {', '.join(DTYPES)}")
        if (not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape)):
            raise self._fail(f"corrupt header: tensor {name!r} has shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or any(type(o) is not int or o < 0 for o in offsets) or offsets[0] > offsets[1]):
            raise self._fail(f"corrupt header: tensor {name!r} has data_offsets {offsets!r}")
        begin, end = offsets
        if end > data_size:
            raise self._fail(f"truncated or corrupt: tensor {name!r} data_offsets [{begin}, {end}] run past "
                             f"the data buffer ({data_size} bytes)")
        expected = math.prod(shape) * itemsize(dtype)
        if end - begin != expected:
            raise self._fail(f"corrupt header: tensor {name!r} {dtype} {shape} needs {expected} bytes but "
                             f"data_offsets [{begin}, {end}] hold {end - begin}")
        return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end, self.path)

    # -- data ---------------------------------------------------------------------------------------
    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """A fresh (writable, owned) tensor with the data of `name`, or of rows[start:stop] of its first dim.

        The bytes are copied out of the mmap and the mapped pages are dropped right after, so the
        process's resident memory holds one tensor (or one row range), never the file."""
        info = self.infos[name]
        shape = list(info.shape)
        begin, end = info.begin, info.end
        if rows is not None:
            start, stop, step = rows.indices(shape[0] if shape else 1)
            assert step == 1, "row ranges only"
            row_bytes = info.nbytes // shape[0] if shape and shape[0] else 0
            begin, end = info.begin + start * row_bytes, info.begin + stop * row_bytes
            shape[0] = max(stop - start, 0)
        out = torch.empty(end - begin, dtype=torch.uint8)
        if end > begin:
            out.numpy()[:] = np.frombuffer(self._mmap, dtype=np.uint8, count=end - begin, offset=begin)
            self._drop_pages(begin, end)
        return out.view(DTYPES[info.dtype]).reshape(shape)

    def _drop_pages(self, begin: int, end: int) -> None:
        # MADV_DONTNEED on a read-only file mapping only unmaps our view; the kernel keeps its page cache.
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = begin - begin % mmap.PAGESIZE
        try:
            self._mmap.madvise(mmap.MADV_DONTNEED, first, end - first)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- writing --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


class SafetensorsWriter:
    """Writes the header first (every tensor's dtype and shape is known up front), then tensor data in
    any order and in pieces: `write(name, tensor, row_start)` puts rows of one tensor in place. Memory
    holds one piece at a time, never the file. `close()` checks every byte of every tensor was written
    exactly once."""

    def __init__(self, path: str | Path, specs: list[TensorSpec], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        # Wider dtypes first, so every tensor starts aligned to its element size (the header is padded
        # to 8 bytes), as the safetensors package itself orders them.
        ordered = sorted(specs, key=lambda s: -itemsize(s.dtype))
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        self.specs: dict[str, TensorSpec] = {}
        self._begin: dict[str, int] = {}
        offset = 0
        for spec in ordered:
            if spec.name in self.specs:
                raise ValueError(f"tensor {spec.name!r} listed twice for {self.path}")
            self.specs[spec.name] = spec
            header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape),
                                 "data_offsets": [offset, offset + spec.nbytes]}
            self._begin[spec.name] = offset
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._data_start = 8 + len(raw)
        self._written: dict[str, list[tuple[int, int]]] = {name: [] for name in self.specs}
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, struct.pack("<Q", len(raw)) + raw)
        os.ftruncate(self._fd, self._data_start + offset)

    def write(self, name: str, tensor: torch.Tensor, row_start: int = 0) -> int:
        """Write `tensor` as rows [row_start, row_start + len) of `name`; returns the bytes written."""
        spec = self.specs[name]
        if DTYPES[spec.dtype] != tensor.dtype:
            raise ValueError(f"{name}: writing {tensor.dtype} into a {spec.dtype} tensor")
        full = tuple(spec.shape)
        if tuple(tensor.shape[1:]) != full[1:] or (not full and tensor.shape != ()):
            raise ValueError(f"{name}: piece of shape {tuple(tensor.shape)} does not fit {full}")
        rows = tensor.shape[0] if full else 1
        if row_start + rows > (full[0] if full else 1):
            raise ValueError(f"{name}: rows {row_start}..{row_start + rows} past {full}")
        row_bytes = spec.nbytes // full[0] if full and full[0] else spec.nbytes
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy() if tensor.numel() else np.empty(0, np.uint8)
        start = self._data_start + self._begin[name] + row_start * row_bytes
        view = memoryview(data.reshape(-1))
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], start + done)
        self._written[name].append((row_start * row_bytes, row_start * row_bytes + done))
        return done

    def close(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        for name, spans in self._written.items():
            spans.sort()
            covered = 0
            for a, b in spans:
                if a != covered:
                    raise RuntimeError(f"{self.path}: tensor {name!r} bytes {covered}..{a} "
                                       f"{'never written' if a > covered else 'written twice'}")
                covered = b
            if covered != self.specs[name].nbytes:
                raise RuntimeError(f"{self.path}: tensor {name!r} only {covered} of "
                                   f"{self.specs[name].nbytes} bytes written")

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
