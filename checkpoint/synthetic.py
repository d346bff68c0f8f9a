"""Full-size synthetic checkpoints: a released model's config, shapes and tensor names with random values.

What a user's first real build reads, without the real weights: the HF layout of gpt-oss-20b / 120b (MXFP4
experts as `*_blocks` uint8 FP4 codes and `*_scales` uint8 e8m0 exponents, everything else bf16, config.json
with its `quantization_config`), or the unquantized HF layout (`mxfp4=False`: every tensor bf16). `layers`
keeps only the first N layers (a slice with the real per-layer shapes); `vocab_size` shrinks the embedding
and head (they are streamed like any other tensor, so a smaller vocabulary only saves disk).

Every piece of every tensor is drawn fresh, so no two tensors (and no two experts' slices of a stacked tensor)
share bytes: a plan builder that stores identical weights once (TensorRT-RTX does) sees as many distinct bytes
as a real checkpoint has. Each piece of at most PIECE_BYTES (whole rows) comes from its own counter-based
stream, numpy's PCG64DXSM seeded by (seed, the tensor name's bytes, first row), so the output is deterministic
for a seed and memory stays about one piece; the raw 64-bit words are the bytes (2 GB/s), mapped to each
dtype's values through a lookup table. Values keep a forward pass finite: MXFP4 codes any byte (two FP4
nibbles), e8m0 scales 2^-10..2^-4, bf16 weights the 65,536 quantiles of N(0, 0.02) (|x| <= 0.09), norm
weights those of N(1, 0.02). Pieces are written through checkpoint.ShardedWriter (5 GB shards and an index,
as HF ships them).
The tiny model's tokenizer is copied in (`tokenizer=True`) so calibration and the Triton repository have one;
its ids (< 4096) are valid for any vocabulary, but it is not the o200k tokenizer the released models use.
"""

from __future__ import annotations

import json
import math
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from checkpoint.config_io import hf_config_dict
from checkpoint.convert.mapping import expand
from checkpoint.store import ShardedWriter
from checkpoint.safetensors_io import TensorSpec
from checkpoint.errors import CheckpointError
from spec.registry import get_model

PIECE_BYTES = 64 << 20
SCALE_EXPONENTS = (117, 124)            # e8m0 127 = 2^0; [117, 124) = 2^-10 .. 2^-4
TOKENIZER_FROM = Path(__file__).resolve().parents[1] / "builder" / "assets" / "tiny"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def synthetic_config(model="20b", layers: int | None = None, vocab_size: int | None = None):
    """The registry's model config (spec.registry.get_model; or a ModelConfig as it is), with the slice's
    depth / vocabulary."""
    config = get_model(model) if isinstance(model, str) else model
    over = {}
    if layers is not None:
        if not 1 <= layers <= config.num_layers:
            raise CheckpointError(f"layers={layers}: {config.name} has {config.num_layers} layers; fix: pass 1.."
                                  f"{config.num_layers}")
        over["num_layers"] = layers
    if vocab_size is not None:
        over["vocab_size"] = vocab_size
    if over:
        config = config.with_overrides(name=f"synthetic-{config.name}", **over)
    return config


@lru_cache(maxsize=None)
def _table(kind: str) -> np.ndarray:
    """The 16-bit value a random 16-bit index stands for (uint16 bit patterns; uint8 for scales)."""
    if kind == "scales":                 # 256 bytes spread evenly over the exponent range
        lo, hi = SCALE_EXPONENTS
        return (lo + np.arange(256) * (hi - lo) // 256).astype(np.uint8)
    from statistics import NormalDist
    mean = 1.0 if kind == "norm" else 0.0
    inv = NormalDist(mean, 0.02).inv_cdf
    q = np.array([inv((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32)
    u = q.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)   # bf16, round to nearest even


def piece_seed(seed: int, name: str, row: int) -> list[int]:
    """The stream key of the piece of tensor `name` starting at `row`: distinct pieces, distinct streams."""
    return [seed, int.from_bytes(name.encode(), "little"), row]


def _random_piece(kind: str, n: int, key: list[int]) -> torch.Tensor:
    """n fresh values of `kind` (codes / scales: uint8; float / norm: bf16) from the stream named by key."""
    width = 1 if kind in ("codes", "scales") else 2
    bits = np.random.PCG64DXSM(np.random.SeedSequence(key))
    raw = bits.random_raw(-(-n * width // 8)).view(np.uint8 if width == 1 else np.uint16)[:n]
    if kind == "codes":
        return torch.from_numpy(raw)
    values = np.take(_table(kind), raw)
    return torch.from_numpy(values) if width == 1 else torch.from_numpy(values).view(torch.bfloat16)


def _kind_for(name: str, dtype: str) -> str:
    if dtype == "U8":
        return "scales" if name.endswith("_scales") else "codes"
    return "norm" if "norm" in name else "float"


def write_synthetic(folder: str | Path, model="20b", *, layers: int | None = None,
                    vocab_size: int | None = None, mxfp4: bool = True, seed: int = 0, tokenizer: bool = True,
                    max_shard_bytes: int | None = None) -> Path:
    """Write a synthetic checkpoint of `model` (a spec.registry name or a ModelConfig) into the new folder."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CheckpointError(f"{folder} exists and is not empty; fix: pass a new folder")
    config = synthetic_config(model, layers, vocab_size)
    layout = "hf-mxfp4" if mxfp4 else "hf"
    specs = [TensorSpec(name, "BF16" if kind == "float" else "U8", tuple(shape))
             for name, (kind, shape) in expand(layout, config).shapes.items()]
    if mxfp4 and not any(s.dtype == "U8" for s in specs):
        raise CheckpointError(f"{layout}: no uint8 MXFP4 tensors in the expanded layout; the mapping changed")
    folder.mkdir(parents=True, exist_ok=True)
    kw = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    writer = ShardedWriter(folder, specs, **kw)
    for spec in specs:
        rows = spec.shape[0]
        row_elems = math.prod(spec.shape[1:])
        row_bytes = max(1, spec.nbytes // max(1, rows))
        step = max(1, PIECE_BYTES // row_bytes)
        kind = _kind_for(spec.name, spec.dtype)
        for r in range(0, rows, step):
            n = min(step, rows - r)
            piece = _random_piece(kind, n * row_elems, piece_seed(seed, spec.name, r))
            writer.write(spec.name, piece.reshape((n,) + tuple(spec.shape[1:])), r)
    writer.close()
    (folder / "config.json").write_text(json.dumps(hf_config_dict(config, mxfp4=mxfp4), indent=2) + "\n")
    if tokenizer:
        for f in TOKENIZER_FILES:
            shutil.copyfile(TOKENIZER_FROM / f, folder / f)
    return folder


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description="Write a full-size synthetic gpt-oss checkpoint (random values, "
                                            "released shapes and names).")
    p.add_argument("folder", type=Path)
    p.add_argument("--model", default="20b", help="spec.registry model name (20b, 120b, ...)")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="unquantized HF layout instead of MXFP4 experts")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = write_synthetic(a.folder, a.model, layers=a.layers, vocab_size=a.vocab_size, mxfp4=not a.bf16,
                          seed=a.seed)
    total = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"{out}: {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
