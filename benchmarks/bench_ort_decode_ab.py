"""One ONNX Runtime decode step of several graphs of the same engine, interleaved step by step in one process.

    python benchmarks/bench_ort_decode_ab.py [--config tiny|mid] [--threads 1] [--steps 300] [LABEL=GRAPH.onnx ...]

The graph this tree exports (label "this", lowering "onnxruntime-cpu", bench_executors' random weights) always
runs first; each LABEL=GRAPH.onnx is another export of the same saved weights (GRAPH exported by another tree
with the same cache interface, e.g. a branch trying a different MoE lowering). One round runs one decode step of
every graph, at the same position, so load on a shared machine hits all of them alike; the table is each
graph's median step over the rounds (the first 20 left out) and its ratio to "this". Separate processes timed
minutes apart on a loaded 2-core machine disagreed by up to 10x, which is why this runs them interleaved.
With --threads 1 a step's wall time is close to its own work; 2 threads on a busy machine mostly time
ONNX Runtime's spinning pool.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_executors import CONFIGS  # noqa: E402
from bench_runtime import save_random_hf  # noqa: E402

PROMPT = 32          # tokens in the cache before the timed steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--weights", type=Path, default=None,
                    help="the saved random checkpoint folder to use (made there if absent); default: a temporary one")
    ap.add_argument("graphs", nargs="*", help="LABEL=GRAPH.onnx, exported from the same --weights folder")
    args = ap.parse_args()
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from plugins.onnx.graph import ORT_CPU
    from runtime.executors.onnxruntime import OnnxRuntimeExecutor, _network

    with tempfile.TemporaryDirectory(prefix="ort-decode-ab-") as tmp:
        folder = args.weights or Path(tmp) / "hf"
        if not (folder / "config.json").exists():
            save_random_hf(CONFIGS[args.config], folder)
        with load_canonical(folder) as ck:
            net = _network(folder, ck)
            export_onnx(net, ck, Path(tmp) / "this.onnx", dtype="float32", lowering=ORT_CPU)
        graphs = [("this", Path(tmp) / "this.onnx")] + [(a.split("=", 1)[0], Path(a.split("=", 1)[1]))
                                                         for a in args.graphs]
        runs = []
        for label, path in graphs:
            ex = OnnxRuntimeExecutor(net, path, threads=args.threads)
            cache = ex.new_cache(1)
            ex.forward(torch.arange(PROMPT)[None] % net.vocab_size, torch.arange(PROMPT)[None], cache)
            runs.append((label, ex, cache, []))
        ids = torch.tensor([[5]])
        for i in range(args.steps + 20):
            pos = torch.tensor([[PROMPT + i]])
            for _, ex, cache, times in runs:
                t = time.perf_counter()
                ex.forward(ids, pos, cache)
                times.append(time.perf_counter() - t)
        print(f"{args.config}, {args.threads} thread(s), median of {args.steps} interleaved decode steps")
        print("| graph | step ms | tok/s | vs this |\n|---|---|---|---|")
        base = None
        for label, ex, _, times in runs:
            ms = statistics.median(times[20:]) * 1e3
            base = base or ms
            print(f"| {label} | {ms:.3f} | {1e3 / ms:.0f} | {ms / base:.2f}x |")
            ex.close()


if __name__ == "__main__":
    main()
