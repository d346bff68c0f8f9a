"""convert-checkpoint SRC DST --to {hf,hf-mxfp4,openai,hf-nvfp4,hf-fp8} [--calib-file FILE | --calibrate]
[--kv-cache fp8] [--force]: the command-line face of builder.convert.calibrate_and_convert. Bad input exits 2
with the converter's message (file, tensor, fix)."""

from __future__ import annotations

import argparse
import re
import sys

import torch

from checkpoint.errors import CheckpointError
from builder.convert import calibrate_and_convert
from checkpoint.store import DEFAULT_SHARD_BYTES
from checkpoint.convert.tables import TARGETS

# Targets whose activation scales must always be calibrated: the built-in texts unless --calib-file.
ALWAYS_CALIBRATED = ("hf-fp8",)


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2) or "_"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="convert-checkpoint",
        description="Convert a gpt-oss checkpoint (HF bf16/fp32, HF MXFP4, OpenAI original, or ModelOpt HF NVFP4/FP8; "
                    "detected from its files) to another of these formats, streaming one tensor piece at a time.")
    p.add_argument("src", help="checkpoint folder (config.json + *.safetensors)")
    p.add_argument("dst", help="output folder (written to a temporary folder, renamed at the end)")
    p.add_argument("--to", required=True, choices=TARGETS,
                   help="hf: experts bf16; hf-mxfp4: experts MXFP4 as gpt-oss ships them; openai: original/ layout; "
                        "hf-nvfp4: ModelOpt NVFP4 experts (weight-only W4A16_NVFP4, or W4A4 NVFP4 when calibrated); "
                        "hf-fp8: ModelOpt FP8 W8A8 for every linear but router, embeddings and lm_head (always "
                        "calibrated; loaded by the reference runtime and vLLM-style loaders, not TensorRT-LLM's gpt-oss)")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calib-file", metavar="FILE",
                     help="calibrate activation scales on FILE (UTF-8, one text per line): hf-nvfp4 becomes W4A4, "
                          "hf-fp8 uses it instead of the built-in texts")
    cal.add_argument("--calibrate", action="store_true",
                     help="calibrate on the built-in texts (builder.calibrate); implied for hf-fp8")
    p.add_argument("--kv-cache", choices=["fp8"], default=None,
                   help="also calibrate FP8 KV-cache scales (k_scale/v_scale, kv_cache_quant_algo FP8); needs calibration")
    p.add_argument("--calib-max-tokens", type=int, default=None, help="tokens per calibration text (default 512)")
    p.add_argument("--calib-device", default="cpu",
                   help="device of the reference runtime that calibrates (e.g. cuda; it holds the whole model)")
    p.add_argument("--calib-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype while calibrating (bfloat16 halves its memory)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists (only after success)")
    p.add_argument("--max-shard-size", type=_size, default=DEFAULT_SHARD_BYTES,
                   help="largest output shard, e.g. 5GB (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args(argv)
    calibration = args.calib_file or ("default" if args.calibrate or args.to in ALWAYS_CALIBRATED else None)
    options = {"device": args.calib_device, "dtype": getattr(torch, args.calib_dtype)}
    if args.calib_max_tokens:
        options["max_tokens"] = args.calib_max_tokens
    try:
        out = calibrate_and_convert(args.src, args.dst, args.to, force=args.force, progress=not args.no_progress,
                                 max_shard_bytes=args.max_shard_size, calibration=calibration,
                                 kv_cache=args.kv_cache,
                                 calib_options=options if calibration else None)
    except CheckpointError as e:
        print(f"convert-checkpoint: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:       # a read-only or full disk, a path through a file: nothing was installed
        print(f"convert-checkpoint: error: {e.filename or args.dst}: {e.strerror or e}; fix: check free space and "
              f"permissions where DST is written", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
