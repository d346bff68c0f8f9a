"""Decode speed of the executors on CPU against transformers `generate`, same weights, greedy, batch 1, with
the machine's memory-bandwidth roofline beside them.

    python benchmarks/bench_executors.py [--config tiny|mid|both] [--prompt-len 64] [--new-tokens 64]

Executors: the reference runtime (torch), ONNX Runtime on the exported fp32 graph (runtime.executors), and
transformers' GptOssForCausalLM.generate. decode tok/s = (N - 1) / (first -> last token) inside one
generation, best of --repeats interleaved runs. Roofline: measured copy bandwidth (numpy, read + write
bytes over time) / weight bytes one decode step reads (fp32: active parameters, embedding row excluded,
x 4 bytes). Goal: the fastest executor >= 3x transformers on `mid`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_runtime import save_random_hf  # noqa: E402
from spec.params import active_params  # noqa: E402
from spec.registry import get_model  # noqa: E402
from spec.registry.models import ModelConfig  # noqa: E402
from runtime import SamplingParams  # noqa: E402
from runtime.executors import load_runtime  # noqa: E402

CONFIGS = {
    "tiny": get_model("tiny"),
    # 4 layers, hidden 512, 8 experts top-2, window 128 as released.
    "mid": ModelConfig(name="mid", num_layers=4, hidden_size=512, head_dim=64, num_q_heads=8, num_kv_heads=2,
                       vocab_size=8192, mlp="moe", intermediate_size=512, num_experts=8, experts_per_token=2,
                       sliding_window=128, rope_scaling_factor=32.0, rope_original_max_position=4096),
}
CLOCK = time.perf_counter


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a large numpy copy (read + write)."""
    src = np.ones(mib << 18, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def bench(name: str, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    c = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        hf = save_random_hf(c, Path(tmp) / name)
        runtimes = {who: load_runtime(Path(tmp) / name, who) for who in ("reference", "onnxruntime")}
    ids = torch.randint(0, c.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))

    def hf_run(n):
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self):
                self.times, self.seen_prompt = [], False

            def put(self, value):
                if self.seen_prompt:
                    self.times.append(CLOCK())
                self.seen_prompt = True

            def end(self):
                pass

        clock = Clock()
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                              streamer=clock)
        return out[0, prompt_len:].tolist(), clock.times

    def executor_run(rt):
        def run(n):
            times, toks = [], []
            for event in rt.generate_stream([ids[0].tolist()], SamplingParams(max_tokens=n, stop_token_ids=())):
                times.append(CLOCK())
                toks.append(event.token_id)
            return toks, times
        return run

    runs = {"transformers": hf_run, **{who: executor_run(rt) for who, rt in runtimes.items()}}
    tokens = {who: run(new_tokens)[0] for who, run in runs.items()}      # also the warm-up
    best = {who: float("inf") for who in runs}
    for _ in range(repeats):
        for who, run in runs.items():
            _, t = run(new_tokens)
            best[who] = min(best[who], (t[-1] - t[0]) / (new_tokens - 1))
    return {"model": name, "tok_s": {who: 1.0 / b for who, b in best.items()},
            "agree": {who: tokens[who] == tokens["transformers"] for who in runs},
            "step_bytes": 4 * (active_params(c))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("tiny", "mid", "both"), default="both")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import onnxruntime
    bw = copy_bandwidth()
    names = ["tiny", "mid"] if args.config == "both" else [args.config]
    print(f"CPU, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"fp32, batch 1, greedy, prompt {args.prompt_len}, {args.new_tokens} new tokens, best of {args.repeats}; "
          f"copy bandwidth {bw / 1e9:.1f} GB/s")
    print(f"{'model':<6} {'executor':<13} {'decode tok/s':>13} {'x transformers':>15} {'% of roofline':>14} "
          f"{'same tokens':>12}")
    for name in names:
        r = bench(name, args.prompt_len, args.new_tokens, args.repeats)
        roof = bw / r["step_bytes"]
        for who, v in r["tok_s"].items():
            print(f"{name:<6} {who:<13} {v:>13.1f} {v / r['tok_s']['transformers']:>14.2f}x {v / roof:>13.1%} "
                  f"{str(r['agree'][who]):>12}")
        print(f"{name:<6} {'roofline':<13} {roof:>13.1f}   ({r['step_bytes'] / 2**20:.1f} MiB of fp32 weights "
              f"per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
