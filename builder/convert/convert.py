"""convert_checkpoint: any supported checkpoint -> HF bf16, HF MXFP4 or OpenAI original, streamed.

Every target tensor is produced by one WRITE rule from canonical values; rules whose quirk is rowwise
run in pieces of about `chunk_bytes` along dim 0 (experts, vocab rows), so peak memory is one piece
plus the small non-rowwise tensors (q/k/v), whatever the model size.

Safety: output goes to a hidden temporary folder next to DST and is renamed into place only after every
tensor, the config and the aux files are written; an existing DST is replaced only with force=True and
never left half-written; the source is validated before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch

from builder.canonical import MXFP4Weight
from builder.checkpoint.config_io import hf_config_dict, openai_config_dict
from builder.checkpoint.errors import CheckpointError
from builder.checkpoint.safetensors_io import DTYPE_NAMES, TensorSpec
from builder.checkpoint.store import DEFAULT_SHARD_BYTES, INDEX_NAME, ShardedWriter
from builder.convert.load import CanonicalCheckpoint, load_canonical
from builder.convert.mapping import Expanded, expand
from builder.convert.quirks import DEQUANT_DTYPE, is_rowwise
from builder.convert.tables import TARGETS
from builder.fsutil import install_dir, staging_dir

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
# Files next to the weights that belong to the model (tokenizer, chat template, generation defaults)
# are copied; weights, configs and index files are regenerated.
_NOT_COPIED = {"config.json", INDEX_NAME, "dtypes.json"}
_TORCH_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise CheckpointError(f"DST {dst} overlaps SRC {src}; fix: write the converted checkpoint to a separate "
                              f"folder (DST must not be SRC, inside it, or contain it)")
    if dst.exists() or dst.is_symlink():
        if not force:
            raise CheckpointError(f"DST {dst} already exists; fix: choose another DST, or pass --force "
                                  f"(force=True) to replace it once the conversion has succeeded")


def _target_specs(ck: CanonicalCheckpoint, ex: Expanded) -> list[TensorSpec]:
    specs = []
    for targets, (quirk, inputs) in ex.write.items():
        for t in targets:
            kind, shape = ex.shapes[t]
            if kind == "u8":
                dtype = "U8"
            else:
                d = ck.dtype(inputs[0])
                dtype = DTYPE_NAMES[DEQUANT_DTYPE if d == "mxfp4" else d]
            specs.append(TensorSpec(t, dtype, shape))
    return specs


def _row_step(ck: CanonicalCheckpoint, inputs, specs, chunk_bytes: int) -> int:
    rows = specs[0].shape[0]
    # Worst case per row: every input dequantized to fp32 plus the outputs.
    per_row = sum(4 * math.prod(ck.shape(n)[1:]) for n in inputs) + sum(s.nbytes // max(rows, 1) for s in specs)
    return max(1, chunk_bytes // max(per_row, 1))


def _write_rule(ck, writer, specs, quirk, inputs, chunk_bytes, bar) -> None:
    rows = specs[0].shape[0] if specs[0].shape else 1
    if is_rowwise(quirk) and specs[0].shape:
        step = _row_step(ck, inputs, specs, chunk_bytes)
        pieces = [slice(r, min(r + step, rows)) for r in range(0, rows, step)]
    else:
        pieces = [None]
    for piece in pieces:
        values = [ck.get(n, piece) for n in inputs]
        out = quirk(ck.config, *values)
        outs = out if isinstance(out, tuple) else (out,)
        for spec, tensor in zip(specs, outs, strict=True):
            assert not isinstance(tensor, MXFP4Weight)
            done = writer.write(spec.name, tensor, piece.start if piece else 0)
            bar.update(done)
        del values, out, outs


def _config_dict(to: str, ck: CanonicalCheckpoint) -> dict:
    if to == "openai":
        return openai_config_dict(ck.config)
    embed = ck.dtype("embed.weight")
    return hf_config_dict(ck.config, mxfp4=(to == "hf-mxfp4"), dtype=_TORCH_DTYPE_NAMES.get(embed, "bfloat16"))


def _copy_aux(src: Path, dst: Path) -> None:
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix != ".safetensors" and f.name not in _NOT_COPIED:
            shutil.copy2(f, dst / f.name)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


def convert_checkpoint(src, dst, to: str, force: bool = False, progress: bool = True,
                       max_shard_bytes: int = DEFAULT_SHARD_BYTES, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Path:
    """Convert checkpoint folder `src` into `dst` in format `to` ("hf", "hf-mxfp4" or "openai").

    bf16/fp32 experts are packed to MXFP4 (OCP floor scale, round-half-even) for "hf-mxfp4" and "openai";
    MXFP4 experts are dequantized exactly to bf16 for "hf"; everything else keeps its dtype and bits.
    Raises CheckpointError (naming the file, tensor and fix) on bad input; DST is then untouched."""
    if to not in TARGETS:
        raise CheckpointError(f"unknown target format {to!r}; fix: use one of {', '.join(TARGETS)}")
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, force)
    with load_canonical(src) as ck:
        ex = expand(to, ck.config)
        config = _config_dict(to, ck)
        specs = _target_specs(ck, ex)
        by_name = {s.name: s for s in specs}
        total = sum(s.nbytes for s in specs)
        dst.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dst.parent).free
        if free < total:
            raise CheckpointError(f"{dst.parent}: {free / 2**30:.1f} GiB free, the {to} checkpoint needs "
                                  f"{total / 2**30:.1f} GiB; fix: free space or choose another DST")
        tmp = staging_dir(dst)
        writer = None
        try:
            writer = ShardedWriter(tmp, specs, max_shard_bytes)
            with _progress(total, progress, f"{src.name} -> {to}") as bar:
                for i, (targets, (quirk, inputs)) in enumerate(ex.write.items()):
                    bar.set_postfix_str(f"tensor {i + 1}/{len(ex.write)}", refresh=False)
                    _write_rule(ck, writer, [by_name[t] for t in targets], quirk, inputs, chunk_bytes, bar)
            writer.close()
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            _copy_aux(src, tmp)
            install_dir(tmp, dst)
        except BaseException:
            if writer is not None:
                writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dst
