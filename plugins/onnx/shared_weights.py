"""Initializers that point into a checkpoint's safetensors files instead of being written a second time.

    share = CheckpointBytes(engine_dir)                 # the engine's shards, indexed by tensor byte size
    graph.save(path, share=share)                       # plugins.onnx.graph.Graph.save

Candidates are whole stored tensors and, for stacked tensors (3 or more dims: experts), each slice of their
first dim (one expert), indexed by (byte size, hash of the first PREFIX_BYTES), so finding the candidates of an
initializer costs one dict lookup whatever the checkpoint's size. An initializer is shared only when the bytes the exporter produces for it are, byte for byte, the bytes of one
stored tensor: Graph.save compares them while it streams the initializer (never assumed from names, dtypes or
layouts: FP4 nibble order, an expert layout or a dtype change shows up as a difference), and on the first
difference writes the initializer to the graph's own data file as before. A shared initializer's ONNX external
data is (location = the shard's file name, offset = the tensor's byte offset in that file: 8 + header length +
data_offsets[0], length = its bytes). ONNX Runtime and TensorRT refuse locations that leave the graph's folder
(`..`), so each shard a graph uses is hard-linked beside the graph: the same inode, one copy on disk. Where a
link cannot be made (another filesystem, permissions) that shard's tensors are written instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PREFIX_BYTES = 4096        # the index key: a stored range's size and the hash of its first bytes


@dataclass(frozen=True)
class StoredTensor:
    name: str              # its name in the checkpoint
    file: Path             # the shard holding it
    offset: int            # absolute byte offset of its data in that file
    nbytes: int


class CheckpointBytes:
    """The tensors of one checkpoint folder (validated headers: checkpoint.store.TensorStore), by byte size."""

    def __init__(self, folder: str | Path):
        from checkpoint.store import TensorStore
        self.folder = Path(folder)
        with TensorStore(self.folder) as store:
            infos = list(store.infos.values())
        self._fds: dict[Path, int] = {}
        self._linked: dict[Path, Path | None] = {}     # shard -> its link beside the graph, None: cannot link
        self._index: dict[tuple[int, bytes], list[StoredTensor]] = {}
        for i in sorted(infos, key=lambda i: (i.path.name, i.begin)):
            if not i.nbytes:
                continue
            self._add(StoredTensor(i.name, i.path, i.begin, i.nbytes))
            if len(i.shape) >= 3 and i.shape[0] > 1:
                step = i.nbytes // i.shape[0]
                for e in range(i.shape[0]):
                    self._add(StoredTensor(f"{i.name}[{e}]", i.path, i.begin + e * step, step))

    def _add(self, t: StoredTensor) -> None:
        self._index.setdefault((t.nbytes, _key(self.read(t, 0, min(t.nbytes, PREFIX_BYTES)))), []).append(t)

    def candidates(self, nbytes: int, head: bytes) -> list[StoredTensor]:
        """The stored ranges of nbytes bytes whose first bytes are those of `head` (at least PREFIX_BYTES of
        it, or all nbytes)."""
        return self._index.get((nbytes, _key(head[:min(nbytes, PREFIX_BYTES)])), [])

    def read(self, t: StoredTensor, start: int, n: int) -> bytes:
        """n bytes of t's data from `start` (pread: nothing stays mapped, so resident memory is one chunk)."""
        fd = self._fds.get(t.file)
        if fd is None:
            fd = self._fds[t.file] = os.open(t.file, os.O_RDONLY)
        return os.pread(fd, n, t.offset + start)

    def link_into(self, t: StoredTensor, folder: Path) -> str | None:
        """The name under which t's shard sits in `folder` (a hard link made on first use), None if it cannot."""
        if t.file not in self._linked:
            self._linked[t.file] = _hard_link(t.file, folder / t.file.name)
        link = self._linked[t.file]
        return link.name if link is not None else None

    def linked(self) -> dict[str, Path]:
        """{link name beside the graph: the shard it is}, for the shards a save used."""
        return {link.name: shard for shard, link in self._linked.items() if link is not None}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _key(prefix: bytes) -> bytes:
    import hashlib
    return hashlib.blake2b(prefix, digest_size=16).digest()


def _hard_link(src: Path, dst: Path) -> Path | None:
    try:
        if dst.exists():
            if os.path.samefile(src, dst):
                return dst
            dst.unlink()
        tmp = dst.with_name(dst.name + ".link-partial")
        if tmp.exists():
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
        return dst
    except OSError:
        return None



def load_graph(path: str | Path):
    """The ModelProto at `path` with its external data read in (small graphs: every weight in memory).

    onnx.load refuses external data files with more than one hard link ("potential hardlink attack", onnx >=
    1.19), which a graph sharing the checkpoint's shards, or any engine installed from the build cache, always
    has; ONNX Runtime and TensorRT read them. This reads each tensor's (location, offset, length) itself, and
    only from a plain file name inside the graph's folder."""
    import onnx
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        d = {e.key: e.value for e in t.external_data}
        loc = d.get("location", "")
        if not loc or Path(loc).name != loc or loc in (".", ".."):
            raise ValueError(f"{path}: initializer {t.name!r} has external data location {loc!r}, not a file "
                             f"beside the graph")
        offset, length = int(d.get("offset", 0)), d.get("length")
        with open(path.parent / loc, "rb") as f:
            f.seek(offset)
            data = f.read(int(length)) if length is not None else f.read()
        if length is not None and len(data) != int(length):
            raise ValueError(f"{path}: initializer {t.name!r}: {loc} holds {len(data)} of its {length} bytes at "
                             f"offset {offset}")
        t.raw_data = data
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    return model
