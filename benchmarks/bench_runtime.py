"""Reference runtime vs transformers `generate` on CPU, same weights, greedy, same prompt and token count.

    python benchmarks/bench_runtime.py [--config tiny|small|both] [--prompt-len 256] [--new-tokens 64]

Timestamps come from inside one generation (a streamer on transformers' generate, the token events of
Runtime.generate_stream): prefill tok/s = prompt_len / (call -> first token), decode tok/s = (N - 1) /
(first -> last token); best of --repeats interleaved runs. Also prints KV-cache bytes at 8K context (bf16 entries)
against the same network with every layer on full attention, for the benchmark model and the released ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spec.network import network_from_config  # noqa: E402
from spec.registry import get_model  # noqa: E402
from spec.registry.models import ModelConfig  # noqa: E402
from runtime import Runtime, SamplingParams  # noqa: E402
from runtime.kv_cache import kv_cache_bytes  # noqa: E402

CONFIGS = {
    "tiny": get_model("tiny"),
    # A bigger toy: hidden 512, 8 layers, 16 experts top-4, window 128 as released.
    "small": ModelConfig(name="small", num_layers=8, hidden_size=512, head_dim=64, num_q_heads=8, num_kv_heads=2,
                         vocab_size=8192, mlp="moe", intermediate_size=512, num_experts=16, experts_per_token=4,
                         sliding_window=128, rope_scaling_factor=32.0, rope_original_max_position=4096),
}


def save_random_hf(c: ModelConfig, folder: Path):
    from transformers import GptOssConfig, GptOssForCausalLM
    cfg = GptOssConfig(
        num_hidden_layers=c.num_layers, hidden_size=c.hidden_size, head_dim=c.head_dim,
        num_attention_heads=c.num_q_heads, num_key_value_heads=c.num_kv_heads, vocab_size=c.vocab_size,
        intermediate_size=c.intermediate_size, num_local_experts=c.num_experts,
        num_experts_per_tok=c.experts_per_token, sliding_window=c.sliding_window,
        max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "factor": c.rope_scaling_factor, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": False, "rope_theta": c.rope_theta,
                         "original_max_position_embeddings": c.rope_original_max_position})
    torch.manual_seed(0)
    model = GptOssForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("sinks"):
                p.normal_(0, 0.2)
    model = model.float().eval()
    model.save_pretrained(folder)
    return model


CLOCK = time.perf_counter


def bench(name: str, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    c = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        hf = save_random_hf(c, Path(tmp) / name)
        rt = Runtime.from_dir(Path(tmp) / name)
    ids = torch.randint(0, c.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))

    def hf_run(n):
        """-> (generated ids, [clock at the call, at each new token]) via a streamer on generate()."""
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self):
                self.times, self.seen_prompt = [], False

            def put(self, value):
                if self.seen_prompt:                              # the first put() is the prompt
                    self.times.append(CLOCK())
                self.seen_prompt = True

            def end(self):
                pass

        clock = Clock()
        t0 = CLOCK()
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                              streamer=clock)
        return out[0, prompt_len:].tolist(), [t0] + clock.times

    def ours_run(n):
        times, toks = [CLOCK()], []
        for event in rt.generate_stream([ids[0].tolist()], SamplingParams(max_tokens=n, stop_token_ids=())):
            times.append(CLOCK())
            toks.append(event.token_id)
        return toks, times

    theirs, _ = hf_run(new_tokens)
    mine, _ = ours_run(new_tokens)
    agree = sum(a == b for a, b in zip(theirs, mine)) / new_tokens
    row = {"model": name, "agree": agree}
    runs = {"transformers": hf_run, "reference": ours_run}
    best = {who: [float("inf"), float("inf")] for who in runs}
    for run in runs.values():
        run(2)                                                   # warm-up
    for _ in range(repeats):                                     # interleaved, so load changes hit both
        for who, run in runs.items():
            _, t = run(new_tokens)
            # prefill: call -> first token; decode: first -> last token, measured inside one run
            best[who][0] = min(best[who][0], t[1] - t[0])
            best[who][1] = min(best[who][1], (t[-1] - t[1]) / (new_tokens - 1))
    for who in runs:
        row[who] = (prompt_len / best[who][0], 1.0 / best[who][1])
    net = rt.network
    row["kv"] = (kv_cache_bytes(net, 8192), kv_cache_bytes(net, 8192, all_full=True))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("tiny", "small", "both"), default="both")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine; "
                         "with several threads it sums them)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["tiny", "small"] if args.config == "both" else [args.config]
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, greedy, "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, best of {args.repeats}, "
          f"{args.clock} clock")
    print(f"{'model':<7} {'runtime':<13} {'prefill tok/s':>14} {'decode tok/s':>13}")
    rows = [bench(n, args.prompt_len, args.new_tokens, args.repeats) for n in names]
    for r in rows:
        for who in ("transformers", "reference"):
            print(f"{r['model']:<7} {who:<13} {r[who][0]:>14.1f} {r[who][1]:>13.1f}")
        pf = r["reference"][0] / r["transformers"][0]
        dc = r["reference"][1] / r["transformers"][1]
        print(f"{r['model']:<7} {'ratio':<13} {pf:>13.2f}x {dc:>12.2f}x   (greedy tokens identical: "
              f"{r['agree']:.0%})")
    print("\nKV cache at 8K context, bf16, batch 1 (sliding layers hold window + sink-token entries):")
    print(f"{'model':<9} {'this network':>14} {'all full attn':>14} {'ratio':>7}")
    nets = [(r["model"], None) for r in rows] + [(m, network_from_config(get_model(m))) for m in ("20b", "120b")]
    for name, net in nets:
        net = net or network_from_config(CONFIGS[name])
        ours, full = kv_cache_bytes(net, 8192), kv_cache_bytes(net, 8192, all_full=True)
        print(f"{name:<9} {ours / 2**20:>11.1f} MiB {full / 2**20:>11.1f} MiB {ours / full:>6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
