"""convert_checkpoint: any supported checkpoint -> HF bf16, HF MXFP4, OpenAI original, or ModelOpt-style
HF NVFP4 / FP8, streamed.

Every target tensor is produced by one WRITE rule from canonical values; rules whose quirk is rowwise
run in pieces of about `chunk_bytes` along dim 0 (experts, vocab rows), so peak memory is one piece
plus the small non-rowwise tensors (q/k/v), whatever the model size. A quantizing rule first agrees on
one scale over all of its inputs in a streaming pre-pass (quant_write.shared_scale), then quantizes piece
by piece; calibrated activation scales come in as data (checkpoint.calibration), measured before anything is written.

Safety: output goes to a hidden temporary folder next to DST and is renamed into place only after every
tensor, the config and the aux files are written; an existing DST is replaced only with force=True and
never left half-written; the source is validated before anything is written.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch

from checkpoint.calibration import Calibration
from checkpoint.errors import CheckpointError
from checkpoint.modelopt_config import HF_QUANT_CONFIG
from checkpoint.safetensors_io import DTYPE_NAMES, TensorSpec
from checkpoint.store import DEFAULT_SHARD_BYTES, ShardedWriter
from checkpoint.convert.load import load_canonical
from checkpoint.convert.mapping import Expanded, expand
from checkpoint.convert.quirks import DEQUANT_DTYPE, is_rowwise
from checkpoint.convert.quant_write import MODELOPT_TARGETS, Inputs, calibrated_scales, config_dicts, quant_format, shared_scale
from checkpoint.convert.tables import TARGETS
from checkpoint.quant_policy import policy
from checkpoint.fsutil import check_output_apart, check_replaceable, install_dir, real_path, staging_dir

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
# Files next to the weights that belong to the model (tokenizer, chat template, generation defaults,
# licence) are copied by name, nothing else: weights, configs and index files are regenerated (a stale
# hf_quant_config.json would make a bf16 target look quantized), and an unknown file may be anything.
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
             "generation_config.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt",
             "tokenizer.model", "LICENSE", "USAGE_POLICY", "README.md", "heldout.txt")


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _dst_replaceable(dst: Path) -> None:
    check_replaceable(dst, _is_checkpoint_dir, "DST", "a checkpoint folder (no config.json)")


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    check_output_apart(dst, {"SRC": src}, "DST")
    if dst.exists() or dst.is_symlink():
        if not force:
            raise CheckpointError(f"DST {dst} already exists; fix: choose another DST, or pass --force "
                                  f"(force=True) to replace it once the conversion has succeeded")
        _dst_replaceable(dst)


_KIND_DTYPES = {"u8": "U8", "f8": "F8_E4M3", "scalar": "F32"}


def _target_specs(src: Inputs, ex: Expanded) -> list[TensorSpec]:
    specs = []
    for targets, (quirk, inputs) in ex.write.items():
        for t in targets:
            kind, shape = ex.shapes[t]
            if kind in _KIND_DTYPES:
                dtype = _KIND_DTYPES[kind]
            else:                               # float: the source's dtype; quantized sources -> bf16
                d = src.dtype(inputs[0])
                dtype = DTYPE_NAMES[DEQUANT_DTYPE if isinstance(d, str) else d]
            specs.append(TensorSpec(t, dtype, shape))
    return specs


def _row_step(src: Inputs, inputs, specs, chunk_bytes: int) -> int:
    rows = specs[0].shape[0]
    # Worst case per row: every input dequantized to fp32 plus the outputs.
    per_row = sum(4 * math.prod(src.shape(n)[1:]) for n in inputs) + sum(s.nbytes // max(rows, 1) for s in specs)
    return max(1, chunk_bytes // max(per_row, 1))


def _write_rule(src: Inputs, writer, specs, quirk, inputs, chunk_bytes, bar) -> None:
    rows = specs[0].shape[0] if specs[0].shape else 1
    if is_rowwise(quirk) and specs[0].shape:
        step = _row_step(src, inputs, specs, chunk_bytes)
        pieces = [slice(r, min(r + step, rows)) for r in range(0, rows, step)]
    else:
        pieces = [None]
    codec = getattr(quirk, "quantizes", None)
    kw = {"scale": shared_scale(src, inputs, pieces, codec)} if codec else {}
    for piece in pieces:
        values = [src.get(n, piece) for n in inputs]
        out = quirk(src.config, *values, **kw)
        outs = out if isinstance(out, tuple) else (out,)
        for spec, tensor in zip(specs, outs, strict=True):
            assert isinstance(tensor, torch.Tensor), f"{spec.name}: the quirk returned {type(tensor).__name__}"
            if not spec.shape and piece is not None and piece.start:
                continue                        # a scalar scale, written with the first piece
            done = writer.write(spec.name, tensor, piece.start if piece and spec.shape else 0)
            bar.update(done)
        del values, out, outs


def _copy_aux(src: Path, dst: Path) -> None:
    """The allow-listed files, as regular files that resolve inside src (a link out of the folder could
    carry anything into the output and its manifest)."""
    roots = [real_path(src)]
    if roots[0].parent.name == "snapshots":      # the Hugging Face cache links snapshot files to ../../blobs
        roots.append(roots[0].parent.parent / "blobs")
    for name in AUX_FILES:
        f = src / name
        if not (f.exists() or f.is_symlink()):
            continue
        target = real_path(f)
        if not any(target.is_relative_to(r) for r in roots):
            raise CheckpointError(f"{f}: a link to {target}, outside the checkpoint folder; fix: copy the file "
                                  f"into {src} instead of linking it")
        if not target.is_file():
            raise CheckpointError(f"{f}: not a regular file; fix: replace it with the file itself")
        shutil.copyfile(target, dst / name)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


def convert_checkpoint(src, dst, to: str, force: bool = False, progress: bool = True,
                       max_shard_bytes: int = DEFAULT_SHARD_BYTES, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                       calibration: Calibration | None = None, kv_cache: str | None = None) -> Path:
    """Convert checkpoint folder `src` into `dst` in format `to` ("hf", "hf-mxfp4", "openai", "hf-nvfp4",
    "hf-fp8").

    bf16/fp32 experts are packed to MXFP4 (OCP floor scale, round-half-even) for "hf-mxfp4" and "openai";
    quantized experts are dequantized to bf16 for "hf" (MXFP4 exactly); everything else keeps its dtype
    and bits. "hf-nvfp4" / "hf-fp8" are ModelOpt-style checkpoints quantized under checkpoint.quant_policy
    (NVFP4: experts only; FP8: every linear but router, embeddings and lm_head); MXFP4 experts become
    NVFP4 exactly (lossless transcode).

    calibration: None, or the measured maxima (checkpoint.calibration.Calibration; builder.calibrate runs a
    model to get them, and builder.convert.calibrate_and_convert takes texts and does both). "hf-nvfp4" with
    None is weight-only NVFP4 (W4A16_NVFP4), with a calibration W4A4 NVFP4 (input scales); "hf-fp8" is
    W8A8 and needs one. kv_cache="fp8" adds calibrated FP8 KV-cache scales (kv_cache_quant_algo FP8).
    Raises CheckpointError (naming the file, tensor and fix) on bad input; DST is then untouched."""
    if to not in TARGETS:
        raise CheckpointError(f"unknown target format {to!r}; fix: use one of {', '.join(TARGETS)}")
    if kv_cache not in (None, "fp8"):
        raise CheckpointError(f"kv_cache={kv_cache!r} is not supported; fix: use None or 'fp8'")
    quant = quant_format(to, calibration)
    if kv_cache == "fp8" and calibration is None:
        raise CheckpointError(f"an FP8 KV cache needs calibrated K/V scales; fix: convert to "
                              f"{' or '.join(MODELOPT_TARGETS)} with a calibration")
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, force)
    with load_canonical(src) as ck:
        pol = policy(quant) if quant else None
        features = (("input_scales",) if pol is not None and pol.calibrated else ()) + \
            (("kv_scales",) if kv_cache == "fp8" else ())
        ex = expand(to, ck.config, features)
        config, hf_quant = config_dicts(to, ck, quant, kv_cache)
        extra = calibrated_scales(ex, pol, calibration) if features else {}
        inputs = Inputs(ck, extra)
        specs = _target_specs(inputs, ex)
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
                for i, (targets, (quirk, names)) in enumerate(ex.write.items()):
                    bar.set_postfix_str(f"tensor {i + 1}/{len(ex.write)}", refresh=False)
                    _write_rule(inputs, writer, [by_name[t] for t in targets], quirk, names, chunk_bytes, bar)
            writer.close()
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            if hf_quant is not None:
                (tmp / HF_QUANT_CONFIG).write_text(json.dumps(hf_quant, indent=4) + "\n")
            _copy_aux(src, tmp)
            install_dir(tmp, dst, _dst_replaceable)
        except BaseException:
            if writer is not None:
                writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dst
