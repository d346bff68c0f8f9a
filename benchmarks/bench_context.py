"""Decode speed against context length, per CPU executor, same weights, with peak RSS: what a step costs once
the KV cache is long (issue #20 items 1, 4 and 7).

    python benchmarks/bench_context.py [--config tiny|ctx32k|both] [--contexts 128,1024,4000] [--new-tokens 32]

For each context C: a prompt of C random tokens is prefilled in chunks (runtime.executors.pieces' chunk size,
the same calls for both executors), then --new-tokens greedy decode steps; decode tok/s = steps / their time.
Each (config, executor) runs in its own process, contexts ascending, so the peak RSS of a row is that process's
high-water mark up to that context. "vs first" is tok/s over tok/s at the shortest context of the same
executor. Goals (issue #20): ONNX Runtime at 4K >= 80% of 128 on tiny; at 16K >= 60% on ctx32k.

Configs: tiny (the shipped architecture, random weights, max_position_embeddings 4096: its 4K point is 4000
tokens so the decode fits) and ctx32k (hidden 512, 4 layers, window 128, max_position_embeddings 32768).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_runtime import save_random_hf  # noqa: E402
from spec.registry import get_model  # noqa: E402
from spec.registry.models import ModelConfig  # noqa: E402

CONFIGS = {
    "tiny": get_model("tiny"),
    "ctx32k": ModelConfig(name="ctx32k", num_layers=4, hidden_size=512, head_dim=64, num_q_heads=8, num_kv_heads=2,
                          vocab_size=8192, mlp="moe", intermediate_size=512, num_experts=8, experts_per_token=2,
                          sliding_window=128, rope_scaling_factor=32.0, rope_original_max_position=1024,
                          max_position_embeddings=32768),
}
DEFAULT_CONTEXTS = {"tiny": [128, 1024, 4000], "ctx32k": [128, 1024, 4096, 16384]}
EXECUTORS = ("onnxruntime", "reference")
PREFILL_CHUNK = 512


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.inference_mode()
def measure(folder: Path, executor: str, contexts: list[int], new_tokens: int) -> list[dict]:
    """One executor over ascending contexts, in this process."""
    from runtime.executors import load_runtime
    rt = load_runtime(folder, executor)
    model, vocab = rt.model, rt.network.vocab_size
    rows = []
    for C in contexts:
        g = torch.Generator().manual_seed(C)
        ids = torch.randint(0, vocab, (1, C), generator=g)
        cache = model.new_cache(1, capacity=C + new_tokens)
        t0 = time.perf_counter()
        for c0 in range(0, C, PREFILL_CHUNK):
            logits = model.forward(ids[:, c0:c0 + PREFILL_CHUNK], torch.arange(c0, min(C, c0 + PREFILL_CHUNK))[None],
                                   cache, logits="last")
        prefill = time.perf_counter() - t0
        token = logits.argmax(-1).view(1, 1)
        t1 = time.perf_counter()
        for step in range(new_tokens):
            logits = model.forward(token, torch.tensor([[C + step]]), cache, logits="last")
            token = logits.argmax(-1).view(1, 1)
        decode = time.perf_counter() - t1
        rows.append({"context": C, "prefill_tok_s": C / prefill, "decode_tok_s": new_tokens / decode,
                     "peak_rss_mib": peak_rss_mib()})
    return rows


def child(args) -> int:
    rows = measure(Path(args.folder), args.executor, [int(c) for c in args.contexts.split(",")], args.new_tokens)
    print(json.dumps(rows))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("tiny", "ctx32k", "both"), default="both")
    ap.add_argument("--contexts", help="comma-separated prompt lengths (default per config)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--executors", default=",".join(EXECUTORS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--executor", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    names = ["tiny", "ctx32k"] if args.config == "both" else [args.config]
    print(f"{'config':8} {'executor':12} {'context':>8} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'vs first':>9} {'peak RSS MiB':>13}")
    for name in names:
        contexts = args.contexts or ",".join(map(str, DEFAULT_CONTEXTS[name]))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            save_random_hf(CONFIGS[name], folder)
            for ex in args.executors.split(","):
                out = subprocess.run([sys.executable, __file__, "--child", "--folder", str(folder), "--executor", ex,
                                      "--contexts", contexts, "--new-tokens", str(args.new_tokens)],
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"{name:8} {ex:12} failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                rows = json.loads(out.stdout.strip().splitlines()[-1])
                first = rows[0]["decode_tok_s"]
                for r in rows:
                    print(f"{name:8} {ex:12} {r['context']:>8} {r['prefill_tok_s']:>14.0f} {r['decode_tok_s']:>13.1f} "
                          f"{r['decode_tok_s'] / first:>8.0%} {r['peak_rss_mib']:>13.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
