"""convert-checkpoint SRC DST --to {hf,hf-mxfp4,openai} [--force]: the command-line face of
builder.convert.convert_checkpoint. Bad input exits 2 with the converter's message (file, tensor, fix)."""

from __future__ import annotations

import argparse
import re
import sys

from builder.checkpoint.errors import CheckpointError
from builder.convert.convert import DEFAULT_SHARD_BYTES, convert_checkpoint
from builder.convert.tables import TARGETS


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2) or "_"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="convert-checkpoint",
        description="Convert a gpt-oss checkpoint (HF bf16/fp32, HF MXFP4 or OpenAI original; detected from its "
                    "files) to another of these formats, streaming one tensor piece at a time.")
    p.add_argument("src", help="checkpoint folder (config.json + *.safetensors)")
    p.add_argument("dst", help="output folder (written to a temporary folder, renamed at the end)")
    p.add_argument("--to", required=True, choices=TARGETS,
                   help="hf: experts bf16; hf-mxfp4: experts MXFP4 as gpt-oss ships them; openai: original/ layout")
    p.add_argument("--force", action="store_true", help="replace DST if it exists (only after success)")
    p.add_argument("--max-shard-size", type=_size, default=DEFAULT_SHARD_BYTES,
                   help="largest output shard, e.g. 5GB (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args(argv)
    try:
        out = convert_checkpoint(args.src, args.dst, args.to, force=args.force, progress=not args.no_progress,
                                 max_shard_bytes=args.max_shard_size)
    except CheckpointError as e:
        print(f"convert-checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
