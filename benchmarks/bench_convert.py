"""Conversion throughput (MB/s) and peak RSS on a synthetic checkpoint with gpt-oss-20b-shaped layers.

    python benchmarks/bench_convert.py [--layers 2] [--vocab 8192] [--workdir DIR]

Generates an HF bf16 checkpoint on the fly (hidden 2880, 64 q heads x 64, 8 kv heads, 32 experts,
intermediate 2880; the vocabulary is reduced because it only adds one streamed embedding), then runs
each conversion in a fresh subprocess and reports its wall time, MB/s of source bytes, and peak RSS
(VmHWM: anonymous memory plus any mmap'd file pages resident at the peak). Peak RSS should stay well
under 2 GB whatever the number of layers: only one ~64 MB piece of a tensor is held at a time.
Note the source was just written, so it is read from the page cache: these are CPU-bound numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = [("hf", "hf-mxfp4"), ("hf-mxfp4", "openai"), ("openai", "hf"), ("hf", "hf"), ("hf", "openai")]


def make_synthetic(folder: Path, layers: int, vocab: int) -> Path:
    from checkpoint.synthetic import write_synthetic
    return write_synthetic(folder, "20b", layers=layers, vocab_size=vocab, mxfp4=False, tokenizer=False)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def child(src: str, dst: str, to: str) -> None:
    """Runs in the subprocess: one conversion, then its own time and peak RSS as JSON."""
    from checkpoint.convert import convert_checkpoint
    t0 = time.perf_counter()
    convert_checkpoint(src, dst, to, progress=False)
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"seconds": seconds, "peak_rss_kb": hwm}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp dir)")
    p.add_argument("--child", nargs=3, metavar=("SRC", "DST", "TO"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        folders = {"hf": make_synthetic(work / "hf", args.layers, args.vocab)}
        print(f"synthetic 20b-shaped checkpoint: {args.layers} layers, vocab {args.vocab}, "
              f"{folder_bytes(folders['hf']) / 1e6:.0f} MB bf16, generated in {time.perf_counter() - t0:.1f} s")
        print(f"{'conversion':<22} {'src MB':>8} {'dst MB':>8} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12}")
        for i, (frm, to) in enumerate(PATHS):
            src, dst = folders[frm], work / f"out{i}-{to}"
            r = subprocess.run([sys.executable, __file__, "--child", str(src), str(dst), to],
                               capture_output=True, text=True, check=False)
            if r.returncode:
                sys.exit(f"{frm} -> {to} failed:\n{r.stderr}")
            m = json.loads(r.stdout.strip().splitlines()[-1])
            folders.setdefault(to, dst)
            sb, db = folder_bytes(src), folder_bytes(dst)
            print(f"{frm + ' -> ' + to:<22} {sb / 1e6:>8.0f} {db / 1e6:>8.0f} {m['seconds']:>8.1f} "
                  f"{sb / 1e6 / m['seconds']:>8.0f} {m['peak_rss_kb'] / 1024:>12.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
