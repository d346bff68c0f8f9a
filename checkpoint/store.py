"""A checkpoint folder's tensors: one file, or shards listed by model.safetensors.index.json.

TensorStore finds which file holds each tensor and reads it lazily; ShardedWriter spreads tensors over
shards (HF naming, index written at the end) so a 65 GB model never has to be one file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from checkpoint.errors import CheckpointError
from checkpoint.safetensors_io import MAX_TOTAL_HEADER_BYTES, SafetensorsFile, SafetensorsWriter, TensorInfo, TensorSpec

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# HF's default shard size; smaller shards would only multiply files.
DEFAULT_SHARD_BYTES = 5 * 1024**3


class TensorStore:
    """Read-only view of every tensor in a folder. `infos` gives dtype/shape/file without reading data."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files: dict[str, SafetensorsFile] = {}
        self.infos: dict[str, TensorInfo] = {}
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        index = self.folder / INDEX_NAME
        if index.exists():
            weight_map = self._read_index(index)
            names = sorted(set(weight_map.values()))
        else:
            weight_map = None
            # OpenAI's reference reads every *.safetensors in the folder; HF writes one model.safetensors.
            names = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not names:
            raise CheckpointError(f"{self.folder}: no *.safetensors files (and no {INDEX_NAME}); fix: point "
                                  f"at the folder that holds the checkpoint's config.json and weights")
        header_bytes = 0
        for fname in names:
            path = self.folder / fname
            if not path.is_file():
                raise CheckpointError(f"{index}: lists shard {fname!r}, which is missing from {self.folder}; "
                                      f"fix: download the missing shard")
            f = self.files[fname] = SafetensorsFile(path)
            header_bytes += f.header_bytes
            if header_bytes > MAX_TOTAL_HEADER_BYTES:
                raise CheckpointError(f"{self.folder}: the headers of {len(self.files)} of {len(names)} shard(s) "
                                      f"already hold {header_bytes} bytes (limit {MAX_TOTAL_HEADER_BYTES}); this is "
                                      f"not a gpt-oss checkpoint or it is corrupt; fix: re-download it")
            for name, info in f.infos.items():
                if name in self.infos:
                    raise CheckpointError(f"{self.folder}: tensor {name!r} is in both "
                                          f"{self.infos[name].path.name} and {fname}; fix: remove the stale file")
                self.infos[name] = info
        if weight_map is not None:
            for name, fname in weight_map.items():
                if name not in self.infos or self.infos[name].path.name != fname:
                    raise CheckpointError(f"{index}: says {name!r} is in {fname}, but that file "
                                          f"{'holds it under another name' if name in self.infos else 'lacks it'}; "
                                          f"fix: re-download the shards or regenerate the index")
            unlisted = sorted(set(self.infos) - set(weight_map))
            if unlisted:
                raise CheckpointError(f"{index}: tensors {unlisted[:8]} are in the shards but not in the index; "
                                      f"fix: regenerate the index or remove stray shards")

    def _read_index(self, index: Path) -> dict[str, str]:
        try:
            if index.stat().st_size > 64 * 1024 * 1024:
                raise ValueError("file is larger than 64 MB")
            data = json.loads(index.read_text())
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) and "/" not in v
                                                           for v in weight_map.values()):
                raise ValueError("weight_map must map tensor names to file names in this folder")
        except (ValueError, KeyError, TypeError, RecursionError, OSError) as e:
            raise CheckpointError(f"{index}: corrupt index ({e}); fix: regenerate or re-download it") from None
        return weight_map

    def names(self) -> list[str]:
        return list(self.infos)

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        return self.files[self.infos[name].path.name].read(name, rows)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[list[TensorSpec]]:
    """Consecutive tensors fill a shard until the next would overflow it (one huge tensor gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


class ShardedWriter:
    """Writes `specs` into folder as model.safetensors, or model-0000i-of-0000n.safetensors plus index."""

    def __init__(self, folder: str | Path, specs: list[TensorSpec], max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        shards = plan_shards(specs, max_shard_bytes)
        n = len(shards)
        self.writers: dict[str, SafetensorsWriter] = {}
        self.weight_map: dict[str, str] = {}
        self.total = sum(s.nbytes for s in specs)
        for i, shard in enumerate(shards):
            fname = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            writer = SafetensorsWriter(self.folder / fname, shard, metadata)
            for spec in shard:
                self.writers[spec.name] = writer
                self.weight_map[spec.name] = fname
        self.sharded = n > 1

    def write(self, name: str, tensor: torch.Tensor, row_start: int = 0) -> int:
        return self.writers[name].write(name, tensor, row_start)

    def close(self) -> None:
        for w in dict.fromkeys(self.writers.values()):
            w.close()
        if self.sharded:
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        for w in dict.fromkeys(self.writers.values()):
            w.abort()
