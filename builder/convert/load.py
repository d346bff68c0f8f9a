"""load_canonical: any supported checkpoint folder, seen through canonical names, read lazily.

Opening a checkpoint reads only headers and config.json, and validates them (names, shapes, dtypes,
config agreement) before a single weight byte is read. Each get() reads the source tensors it needs
from the mmap (optionally one row range of them) and checks their values: NaN/Inf in float weights,
e8m0 scale byte 255 (NaN) in MXFP4 scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from builder.canonical import MXFP4Weight, canonical_shapes
from builder.checkpoint.config_io import read_model_config
from builder.checkpoint.errors import CheckpointError
from builder.checkpoint.safetensors_io import DTYPES, FLOAT_DTYPES
from builder.checkpoint.store import TensorStore
from builder.convert.mapping import Expanded, check_sources, expand
from builder.convert.quirks import is_rowwise, same
from builder.registry.models import ModelConfig

# Value checks scan this many bytes at a time when counting bad values over a whole tensor.
_SCAN_BYTES = 64 * 1024 * 1024


def _config_summary(c: ModelConfig) -> str:
    return (f"num_hidden_layers={c.num_layers}, hidden_size={c.hidden_size}, head_dim={c.head_dim}, "
            f"num_attention_heads={c.num_q_heads}, num_key_value_heads={c.num_kv_heads}, vocab_size={c.vocab_size}, "
            f"intermediate_size={c.intermediate_size}, num_experts={c.num_experts}")


def detect_format(kind: str, names) -> str:
    if kind == "hf":
        return "hf-mxfp4" if any(n.endswith("_blocks") for n in names) else "hf"
    return "openai"


class CanonicalCheckpoint:
    """A checkpoint folder under canonical names. Holds mmaps; close() or use as a context manager."""

    def __init__(self, path: str | Path, validate: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a folder; fix: pass the checkpoint folder (the one with "
                                  f"config.json and the .safetensors files)")
        self.validate = validate
        self.config, kind, self.raw_config = read_model_config(self.path)
        self._store = TensorStore(self.path)
        try:
            self.format = detect_format(kind, self._store.infos)
            self._ex: Expanded = expand(self.format, self.config)
            self._check_headers(kind)
        except BaseException:
            self._store.close()
            raise
        self._shapes = canonical_shapes(self.config)
        counts: dict[str, int] = {}
        for quirk, sources in self._ex.read.values():
            if quirk is not same:
                for s in sources:
                    counts[s] = counts.get(s, 0) + 1
        self._shared = {s for s, n in counts.items() if n > 1}
        self._last = None

    # -- header-level validation ----------------------------------------------------------------------
    def _check_headers(self, kind: str) -> None:
        where = str(self.path)
        quant = (self.raw_config.get("quantization_config") or {}).get("quant_method") if kind == "hf" else None
        if kind == "hf" and (quant == "mxfp4") != (self.format == "hf-mxfp4"):
            has = "MXFP4 _blocks/_scales experts" if self.format == "hf-mxfp4" else "unpacked (bf16/fp32) experts"
            raise CheckpointError(
                f"{self.path / 'config.json'}: quantization_config.quant_method is {quant!r} but the tensors hold "
                f"{has}; the config contradicts the tensors; fix: "
                + ("add quantization_config {\"quant_method\": \"mxfp4\", ...} as gpt-oss ships it"
                   if self.format == "hf-mxfp4" else "remove quantization_config from config.json"))
        check_sources(self._ex, self._store.infos, self.config, where)
        bad = []
        for name, (kind_, shape) in self._ex.shapes.items():
            info = self._store.infos[name]
            if info.shape != shape:
                bad.append(f"{name} in {info.path.name} has shape {list(info.shape)}, the config implies "
                           f"{list(shape)}")
        if bad:
            raise CheckpointError(f"{self.path}: {len(bad)} tensor shape(s) disagree with config.json "
                                  f"({_config_summary(self.config)}): " + "; ".join(bad[:6])
                                  + ("; ..." if len(bad) > 6 else "")
                                  + "; fix: the config contradicts the tensors: use the config.json that came "
                                    "with these weights")
        for name, (kind_, shape) in self._ex.shapes.items():
            info = self._store.infos[name]
            ok = info.dtype in FLOAT_DTYPES if kind_ == "float" else info.dtype == "U8"
            if not ok:
                want = "a float type (BF16, F16, F32)" if kind_ == "float" else "U8 (packed MXFP4 bytes)"
                raise CheckpointError(f"{info.path}: tensor {name} has dtype {info.dtype}, expected {want}; "
                                      f"fix: re-export the checkpoint with the right dtype")

    # -- public API -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        """Logical (dequantized) canonical shape."""
        return self._shapes[name]

    def sources(self, name: str) -> tuple[str, ...]:
        return self._ex.read[name][1]

    def dtype(self, name: str) -> torch.dtype | str:
        """The canonical value's dtype without reading it: a torch dtype, or "mxfp4" for packed experts."""
        quirk, sources = self._ex.read[name]
        if getattr(quirk, "makes_mxfp4", False):
            return "mxfp4"
        dtypes = [DTYPES[self._store.infos[s].dtype] for s in sources]
        out = dtypes[0]
        for d in dtypes[1:]:
            out = torch.promote_types(out, d)
        return out

    def get(self, name: str, rows: slice | None = None) -> torch.Tensor | MXFP4Weight:
        """One canonical value (or rows [a:b] of its first dim), read now from the mmap."""
        quirk, sources = self._ex.read[name]
        if rows is not None and not is_rowwise(quirk):
            value = self.get(name)
            return value[rows].contiguous()
        value = quirk(self.config, *(self._read(s, rows) for s in sources))
        expected = list(self._shapes[name])
        if rows is not None:
            expected[0] = len(range(*rows.indices(expected[0])))
        assert list(value.shape) == expected, f"{name}: built {list(value.shape)}, canonical {expected}"
        return value

    def tensors(self) -> Iterator[tuple[str, torch.Tensor | MXFP4Weight]]:
        for name in self.names():
            yield name, self.get(name)

    def close(self) -> None:
        self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- value validation -----------------------------------------------------------------------------
    def _read(self, source: str, rows: slice | None) -> torch.Tensor:
        # gate and up come from the same interleaved source tensor: keep the last piece of such a shared
        # source, so a converter asking for both reads and checks it once. Only copying quirks see it
        # (see get), so what get() returns never aliases the cache.
        key = (source, None if rows is None else (rows.start, rows.stop))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        t = self._store.read(source, rows)
        if self.validate and self._is_bad(source, t):
            self._raise_bad(source)
        self._last = (key, t) if source in self._shared else None
        return t

    def _is_bad(self, source: str, t: torch.Tensor) -> bool:
        if t.is_floating_point():
            if not t.numel():
                return False
            # min and max are NaN if any element is, +-inf if any is; 20x faster than isfinite().all().
            lo, hi = torch.aminmax(t.reshape(-1))
            return not bool(torch.isfinite(lo) & torch.isfinite(hi))
        return source.endswith("scales") and t.numel() > 0 and int(t.max()) == 255

    def _raise_bad(self, source: str) -> None:
        info = self._store.infos[source]
        rows = info.shape[0] if info.shape else 1
        step = max(1, _SCAN_BYTES // max(1, info.nbytes // max(rows, 1)))
        counts = {"NaN": 0, "Inf": 0, "255": 0}
        for r in range(0, rows, step):
            t = self._store.read(source, slice(r, min(r + step, rows)) if info.shape else None)
            if t.is_floating_point():
                counts["NaN"] += int(torch.isnan(t).sum())
                counts["Inf"] += int(torch.isinf(t).sum())
            else:
                counts["255"] += int((t == 255).sum())
        total = 1
        for d in info.shape:
            total *= d
        if counts["255"]:
            raise CheckpointError(f"{info.path}: tensor {source} has {counts['255']} MXFP4 scale byte(s) equal to 255 "
                                  f"(NaN in e8m0) out of {total}; fix: the checkpoint is corrupt or was packed "
                                  f"from NaN weights; re-download it or re-quantize from clean weights")
        raise CheckpointError(f"{info.path}: tensor {source} has {counts['NaN']} NaN and {counts['Inf']} Inf "
                              f"values out of {total}; fix: the weights are corrupt (or a training run diverged); "
                              f"use a clean checkpoint")


def load_canonical(src: str | Path, validate: bool = True) -> CanonicalCheckpoint:
    """Open a gpt-oss checkpoint folder (HF bf16/fp32, HF MXFP4, or OpenAI original; detected from its
    files) under canonical names. Nothing but headers and config.json is read until get()."""
    return CanonicalCheckpoint(src, validate=validate)
