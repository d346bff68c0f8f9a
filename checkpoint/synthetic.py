"""Full-size synthetic checkpoints: a released model's config, shapes and tensor names with random values.

What a user's first real build reads, without the real weights: the HF layout of gpt-oss-20b / 120b (MXFP4
experts as `*_blocks` uint8 FP4 codes and `*_scales` uint8 e8m0 exponents, everything else bf16, config.json
with its `quantization_config`), or the unquantized HF layout (`mxfp4=False`: every tensor bf16). `layers`
keeps only the first N layers (a slice with the real per-layer shapes); `vocab_size` shrinks the embedding
and head (they are streamed like any other tensor, so a smaller vocabulary only saves disk).

Memory stays about one piece of one tensor: the values are windows into one random pool drawn once (drawing
13 GB of fresh random numbers would cost more than the builds being measured), each tensor written in row
pieces of at most PIECE_BYTES through checkpoint.ShardedWriter (5 GB shards and an index, as HF ships them).
Value ranges keep a forward pass finite: bf16 weights ~N(0, 0.02), norm weights 1, MXFP4 scales 2^-10..2^-4.
The tiny model's tokenizer is copied in (`tokenizer=True`) so calibration and the Triton repository have one;
its ids (< 4096) are valid for any vocabulary, but it is not the o200k tokenizer the released models use.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from checkpoint.config_io import hf_config_dict
from checkpoint.convert.mapping import expand
from checkpoint.store import ShardedWriter
from checkpoint.safetensors_io import TensorSpec
from checkpoint.errors import CheckpointError
from spec.registry import get_model

PIECE_BYTES = 64 << 20
POOL_ELEMENTS = 1 << 25                 # 64 MB of bf16 / 32 MB of uint8: windows of it fill every piece
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


def _pools(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"float": (0.02 * torch.randn(POOL_ELEMENTS, generator=g)).to(torch.bfloat16),
            "codes": torch.randint(0, 256, (POOL_ELEMENTS,), generator=g, dtype=torch.uint8),
            "scales": torch.randint(*SCALE_EXPONENTS, (POOL_ELEMENTS,), generator=g, dtype=torch.uint8),
            "ones": torch.ones(POOL_ELEMENTS, dtype=torch.bfloat16), "gen": g}


def _window(pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n values of the pool from a random offset (tiled when n exceeds half the pool)."""
    if n > pool.numel() // 2:
        return pool.repeat(-(-n // pool.numel()))[:n]
    start = int(torch.randint(0, pool.numel() - n + 1, (), generator=g))
    return pool[start:start + n]


def _pool_for(name: str, dtype: str) -> str:
    if dtype == "U8":
        return "scales" if name.endswith("_scales") else "codes"
    return "ones" if "norm" in name else "float"


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
    pools = _pools(seed)
    g = pools["gen"]
    kw = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    writer = ShardedWriter(folder, specs, **kw)
    for spec in specs:
        rows = spec.shape[0]
        row_elems = math.prod(spec.shape[1:])
        row_bytes = max(1, spec.nbytes // max(1, rows))
        step = max(1, PIECE_BYTES // row_bytes)
        pool = pools[_pool_for(spec.name, spec.dtype)]
        for r in range(0, rows, step):
            n = min(step, rows - r)
            writer.write(spec.name, _window(pool, n * row_elems, g).reshape((n,) + tuple(spec.shape[1:])), r)
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
