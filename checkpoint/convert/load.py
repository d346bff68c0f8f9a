"""load_canonical: any supported checkpoint folder, seen through canonical names, read lazily.

Formats: HF bf16/fp32, HF MXFP4, OpenAI original, and ModelOpt-style HF NVFP4 (W4A4 or weight-only)
and FP8 checkpoints, told apart by their quant config (hf_quant_config.json / quantization_config) and
their tensors. `.quant` is the registry format the checkpoint holds ("bf16", "mxfp4", "nvfp4",
"w4a16-nvfp4", "fp8"); quantized canonical values are MXFP4Weight, NVFP4Tensor or FP8Tensor.

Opening a checkpoint reads only headers and config.json, and validates them (names, shapes, dtypes,
config agreement) before a single weight byte is read. Each get() reads the source tensors it needs
from the mmap (optionally one row range of them) and checks their values: NaN/Inf in float weights,
e8m0 scale byte 255 (NaN) in MXFP4 scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

import numpy as np

from numerics.mxfp4 import MXFP4Weight
from checkpoint.config_io import read_model_config
from checkpoint.errors import CheckpointError
from checkpoint.limits import check_against_tensors
from checkpoint.modelopt_config import read_quant_config
from checkpoint.safetensors_io import DTYPES, FLOAT_DTYPES
from checkpoint.store import TensorStore
from checkpoint.convert.mapping import Expanded, check_sources, expand
from checkpoint.convert.quirks import is_rowwise, same
from numerics.fp8 import FP8Tensor
from numerics.nvfp4 import NVFP4Tensor
from spec.registry.models import ModelConfig
from spec.registry.quant_formats import QUANT_FORMATS

# Stored kind (tables.py) -> the safetensors dtypes accepted for it, and how to name them in errors.
KIND_DTYPES = {"float": (FLOAT_DTYPES, "a float type (BF16, F16, F32)"), "u8": (("U8",), "U8 (packed bytes)"),
               "f8": (("F8_E4M3",), "F8_E4M3 (float8_e4m3fn)"), "scalar": (FLOAT_DTYPES, "a float scalar (F32)")}
# ModelOpt quant_algo -> registry format: the registry's own QuantAlgo names (NVFP4, W4A16_NVFP4, FP8).
MODELOPT_FORMATS = {q.trtllm_quant_algo: name for name, q in QUANT_FORMATS.items()
                    if q.checkpoint in ("hf-nvfp4", "hf-fp8")}

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


def detect(kind: str, names, quant_config: dict | None) -> tuple[str, tuple[str, ...], str]:
    """(layout, optional parts, registry format) of a checkpoint."""
    if quant_config is None:
        layout = detect_format(kind, names)
        return layout, (), "bf16" if layout == "hf" else "mxfp4"
    from checkpoint.quant_policy import policy
    quant = MODELOPT_FORMATS[quant_config["quant_algo"]]
    features = (("input_scales",) if policy(quant).calibrated else ()) + \
        (("kv_scales",) if quant_config["kv_cache_quant_algo"] == "FP8" else ())
    return QUANT_FORMATS[quant].checkpoint, features, quant


def take_rows(value, rows: slice):
    """Rows [a:b] of the first dim of any canonical value (tensor or quantized)."""
    if isinstance(value, torch.Tensor):
        return value[rows].contiguous()
    if isinstance(value, MXFP4Weight):
        return MXFP4Weight(np.ascontiguousarray(value.blocks[rows]), np.ascontiguousarray(value.scales[rows]))
    if isinstance(value, NVFP4Tensor):
        packed = np.ascontiguousarray(value.packed[rows])
        return NVFP4Tensor(packed, np.ascontiguousarray(value.block_scale[rows]), value.global_scale,
                           (packed.shape[0],) + tuple(value.shape[1:]))
    if isinstance(value, FP8Tensor):
        return FP8Tensor(np.ascontiguousarray(value.data[rows]), value.scale)
    raise TypeError(f"cannot take rows of {type(value).__name__}")


class CanonicalCheckpoint:
    """A checkpoint folder under canonical names. Holds mmaps; close() or use as a context manager."""

    def __init__(self, path: str | Path, validate: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a folder; fix: pass the checkpoint folder (the one with "
                                  f"config.json and the .safetensors files)")
        self.validate = validate
        self.config, kind, self.raw_config = read_model_config(self.path)
        self.quant_config = read_quant_config(self.path, self.raw_config) if kind == "hf" else None
        self._store = TensorStore(self.path)
        try:
            check_against_tensors(self.config, self._store.infos, self.path)
            self.format, self.features, self.quant = detect(kind, self._store.infos, self.quant_config)
            self._ex: Expanded = expand(self.format, self.config, self.features)
            self._check_headers(kind)
        except BaseException:
            self._store.close()
            raise
        self._shapes = dict(self._ex.canonical)
        self._scalars = {n for n, (k, _) in self._ex.shapes.items() if k == "scalar"}
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
        if kind == "hf" and self.quant_config is None and (quant == "mxfp4") != (self.format == "hf-mxfp4"):
            has = "MXFP4 _blocks/_scales experts" if self.format == "hf-mxfp4" else "unpacked (bf16/fp32) experts"
            raise CheckpointError(
                f"{self.path / 'config.json'}: quantization_config.quant_method is {quant!r} but the tensors hold "
                f"{has}; the config contradicts the tensors; fix: "
                + ("add quantization_config {\"quant_method\": \"mxfp4\", ...} as gpt-oss ships it"
                   if self.format == "hf-mxfp4" else "remove quantization_config from config.json"))
        try:
            check_sources(self._ex, self._store.infos, self.config, where)
        except CheckpointError as e:
            if self.quant_config is None:
                raise
            q = self.quant_config
            raise CheckpointError(
                f"{e}; note: the quant config says {q['quant_algo']} (kv cache {q['kv_cache_quant_algo']}), which "
                f"this pipeline reads as {self.quant!r}: quantized modules "
                f"{', '.join(_quantized_groups(self.quant)) or 'none'}, everything else bf16, "
                f"{'with' if 'input_scales' in self.features else 'without'} input scales") from None
        bad = []
        for name, (kind_, shape) in self._ex.shapes.items():
            info = self._store.infos[name]
            if kind_ == "scalar" and info.shape in ((), (1,)):
                continue
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
            allowed, want = KIND_DTYPES[kind_]
            if info.dtype not in allowed:
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
        """The canonical value's dtype without reading it: a torch dtype, or "mxfp4" / "nvfp4" / "fp8" for
        quantized values (MXFP4Weight, NVFP4Tensor, FP8Tensor)."""
        quirk, sources = self._ex.read[name]
        if getattr(quirk, "makes_quant", None):
            return quirk.makes_quant
        dtypes = [DTYPES[self._store.infos[s].dtype] for s in sources]
        out = dtypes[0]
        for d in dtypes[1:]:
            out = torch.promote_types(out, d)
        return out

    def get(self, name: str, rows: slice | None = None) -> torch.Tensor | MXFP4Weight:
        """One canonical value (or rows [a:b] of its first dim), read now from the mmap."""
        quirk, sources = self._ex.read[name]
        if rows is not None and not is_rowwise(quirk):
            return take_rows(self.get(name), rows)
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
        if source in self._scalars:
            rows = None                       # a scalar scale belongs to every row piece
        key = (source, None if rows is None else (rows.start, rows.stop))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        t = self._store.read(source, rows)
        if self.validate and self._is_bad(source, t):
            self._raise_bad(source)
        self._last = (key, t) if source in self._shared else None
        return t

    def _is_bad(self, source: str, t: torch.Tensor) -> bool:
        if source in self._scalars:
            v = float(t.float().reshape(-1)[0]) if t.numel() == 1 else float("nan")
            return not (np.isfinite(v) and v > 0)
        if t.dtype == torch.float8_e4m3fn:          # e4m3fn's only NaNs: S.1111.111
            return bool(((t.view(torch.uint8) & 0x7F) == 0x7F).any())
        if t.is_floating_point():
            if not t.numel():
                return False
            # min and max are NaN if any element is, +-inf if any is; 20x faster than isfinite().all().
            lo, hi = torch.aminmax(t.reshape(-1))
            return not bool(torch.isfinite(lo) & torch.isfinite(hi))
        return source.endswith("scales") and t.numel() > 0 and int(t.max()) == 255

    def _raise_bad(self, source: str) -> None:
        info = self._store.infos[source]
        if source in self._scalars:
            t = self._store.read(source)
            raise CheckpointError(f"{info.path}: scale {source} {list(info.shape)} is {t.float().reshape(-1).tolist()}; "
                                  f"a scale must be one finite positive number; fix: re-export the checkpoint "
                                  f"(an all-zero weight gets scale 0 from ModelOpt: re-quantize it with ours)")
        if info.dtype == "F8_E4M3":
            t = self._store.read(source)
            n = int(((t.view(torch.uint8) & 0x7F) == 0x7F).sum())
            raise CheckpointError(f"{info.path}: tensor {source} {list(info.shape)} has {n} float8 NaN value(s); "
                                  f"fix: the checkpoint is corrupt or was quantized from NaN weights; re-export it")
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


def _quantized_groups(quant: str) -> list[str]:
    from checkpoint.quant_policy import policy
    return sorted({g for g, f in policy(quant).groups.items() if f != "bf16"})


def load_canonical(src: str | Path, validate: bool = True) -> CanonicalCheckpoint:
    """Open a gpt-oss checkpoint folder (HF bf16/fp32, HF MXFP4, OpenAI original, ModelOpt HF NVFP4/FP8;
    detected from its files) under canonical names. Nothing but headers and configs are read until get()."""
    return CanonicalCheckpoint(src, validate=validate)
