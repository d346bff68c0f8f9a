"""Decode speed of the executors on CPU against transformers `generate`, same weights, greedy, batch 1, with
the machine's memory-bandwidth roofline beside them.

    python benchmarks/bench_executors.py [--config tiny|mid|both] [--prompt-len 64] [--new-tokens 64]
        [--peers VENV --long-prompt 4000]

Executors: the reference runtime (torch), ONNX Runtime on the exported fp32 graph (runtime.executors), and
transformers' GptOssForCausalLM.generate. decode tok/s = (N - 1) / (first -> last token) inside one
generation, best of --repeats interleaved runs. Roofline: measured copy bandwidth (numpy, read + write
bytes over time) / weight bytes one decode step reads (fp32: active parameters, embedding row excluded,
x 4 bytes). Goal: the fastest executor >= 3x transformers on `mid`.

--peers VENV (a virtual environment with onnxruntime-genai, benchmarks/peers.py): a second table on the same
saved weights, our ONNX Runtime executor beside onnxruntime-genai (fp32, CPU), prefill tok/s (prompt tokens /
seconds to the first token) and decode tok/s for a short (--prompt-len) and a long (--long-prompt) prompt, with
the ratio ours / genai and whether the greedy tokens agree.
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


def peer_rows(name: str, venv: Path, lengths: list[int], new_tokens: int) -> list[dict]:
    """Ours (runtime.executors onnxruntime) and onnxruntime-genai on one saved random model, per prompt length."""
    import peers
    c = CONFIGS[name]
    rows = []
    with tempfile.TemporaryDirectory(dir="/work/scratch" if Path("/work/scratch").is_dir() else None) as tmp:
        save_random_hf(c, Path(tmp) / name)
        ours = load_runtime(Path(tmp) / name, "onnxruntime")
        genai_dir = peers.build_genai(venv, Path(tmp) / name, Path(tmp) / f"{name}-genai")
        for length in lengths:
            ids = torch.randint(0, c.vocab_size, (length,), generator=torch.Generator().manual_seed(1)).tolist()
            t0, times, toks = CLOCK(), [], []
            for event in ours.generate_stream([ids], SamplingParams(max_tokens=new_tokens, stop_token_ids=())):
                times.append(CLOCK())
                toks.append(event.token_id)
            g = peers.run_genai(venv, genai_dir, ids, new_tokens)
            for who, prefill_s, t, out in (("onnxruntime", times[0] - t0, times, toks),
                                           ("onnxruntime-genai", g["prefill_s"], g["times"], g["tokens"])):
                rows.append({"model": name, "prompt": length, "who": who, "prefill_tok_s": length / prefill_s,
                             "decode_tok_s": (len(t) - 1) / (t[-1] - t[0]), "tokens": out})
        ours.model.close()
    return rows


def print_peers(rows: list[dict]) -> None:
    print(f"\n{'model':<6} {'prompt':>6} {'engine':<18} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'ours/genai prefill':>19} {'ours/genai decode':>18} {'same tokens':>12}")
    by = {(r["model"], r["prompt"], r["who"]): r for r in rows}
    for r in rows:
        peer = by[(r["model"], r["prompt"], "onnxruntime-genai")]
        ours = by[(r["model"], r["prompt"], "onnxruntime")]
        ratio = (f"{ours['prefill_tok_s'] / peer['prefill_tok_s']:>18.2f}x {ours['decode_tok_s'] / peer['decode_tok_s']:>17.2f}x"
                 if r["who"] == "onnxruntime" else f"{'':>19} {'':>18}")
        print(f"{r['model']:<6} {r['prompt']:>6} {r['who']:<18} {r['prefill_tok_s']:>14.1f} {r['decode_tok_s']:>13.1f} "
              f"{ratio} {str(r['tokens'] == ours['tokens']):>12}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("tiny", "mid", "both"), default="both")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers", type=Path, help="virtual environment with onnxruntime-genai (benchmarks/peers.py)")
    ap.add_argument("--long-prompt", type=int, default=4000, help="the long prompt of the --peers table")
    ap.add_argument("--peers-only", action="store_true", help="with --peers: skip the transformers table")
    args = ap.parse_args(argv)
    import onnxruntime
    bw = copy_bandwidth()
    names = ["tiny", "mid"] if args.config == "both" else [args.config]
    print(f"CPU, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"fp32, batch 1, greedy, prompt {args.prompt_len}, {args.new_tokens} new tokens, best of {args.repeats}; "
          f"copy bandwidth {bw / 1e9:.1f} GB/s")
    print(f"{'model':<6} {'executor':<13} {'decode tok/s':>13} {'x transformers':>15} {'% of roofline':>14} "
          f"{'same tokens':>12}")
    for name in ([] if args.peers_only else names):
        r = bench(name, args.prompt_len, args.new_tokens, args.repeats)
        roof = bw / r["step_bytes"]
        for who, v in r["tok_s"].items():
            print(f"{name:<6} {who:<13} {v:>13.1f} {v / r['tok_s']['transformers']:>14.2f}x {v / roof:>13.1%} "
                  f"{str(r['agree'][who]):>12}")
        print(f"{name:<6} {'roofline':<13} {roof:>13.1f}   ({r['step_bytes'] / 2**20:.1f} MiB of fp32 weights "
              f"per step)")
    if args.peers:
        rows = [r for name in names for r in peer_rows(name, args.peers, [args.prompt_len, args.long_prompt],
                                                          args.new_tokens)]
        print_peers(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
