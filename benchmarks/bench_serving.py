"""Serving overhead: time to first token and tokens/s through Triton (gRPC streaming) against the reference runtime
called directly, same prompts, same engine, same run.

    python benchmarks/bench_serving.py                      # the tiny engine, made in a temp dir
    python benchmarks/bench_serving.py --engine DIR --prompts 8 --max-tokens 64 --concurrency 8 --json out.json

Rows:
- runtime direct:   runtime.Runtime.generate_stream, one request at a time (batch 1), in this process;
- batcher in-proc:  the in-flight batcher the served model runs (model_repo.inflight), in this process, no Triton;
- triton gRPC:      the same prompts through tritonserver (tensorrt_llm_bls, stream=true), one at a time;
- then the same at --concurrency C: the runtime generating all C prompts as one batch vs C concurrent gRPC streams.
The one-at-a-time paths run interleaved per prompt, --rounds times; figures are medians over requests.
TTFT: request sent -> first generated token (gRPC: first response). tok/s (decode): (tokens - 1) / (last - first).
Overhead per token: triton's decode time per token minus the direct runtime's. Every path uses one torch thread
(what the served model uses by default), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class Run:
    ttft: list = field(default_factory=list)         # s
    decode_tps: list = field(default_factory=list)   # tokens/s after the first token, per request
    tokens: int = 0
    wall: float = 0.0

    def row(self, name):
        return {"path": name, "requests": len(self.ttft), "tokens": self.tokens,
                "ttft_ms_p50": 1000 * statistics.median(self.ttft),
                "ttft_ms_max": 1000 * max(self.ttft),
                "decode_tok_s_p50": statistics.median(self.decode_tps) if self.decode_tps else float("nan"),
                "ms_per_token": 1000 / statistics.median(self.decode_tps) if self.decode_tps else float("nan"),
                "total_tok_s": self.tokens / self.wall if self.wall else float("nan")}


def _record(run: Run, t0: float, stamps: list) -> None:
    run.ttft.append(stamps[0] - t0)
    run.tokens += len(stamps)
    if len(stamps) > 1:
        run.decode_tps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))


def bench_runtime(rt, prompts, max_tokens) -> Run:
    from runtime import SamplingParams
    run = Run()
    start = time.perf_counter()
    for p in prompts:
        t0 = time.perf_counter()
        stamps = [time.perf_counter() for _ in rt.generate_stream([p], SamplingParams(max_tokens=max_tokens,
                                                                                       stop_token_ids=()))]
        _record(run, t0, stamps)
    run.wall = time.perf_counter() - start
    return run


def bench_runtime_batch(rt, prompts, max_tokens) -> Run:
    """All prompts as one batch (what the runtime offers without a server)."""
    from runtime import SamplingParams
    run = Run()
    stamps: dict[int, list] = {i: [] for i in range(len(prompts))}
    t0 = time.perf_counter()
    for ev in rt.generate_stream(prompts, SamplingParams(max_tokens=max_tokens, stop_token_ids=())):
        stamps[ev.index].append(time.perf_counter())
    run.wall = time.perf_counter() - t0
    for i in stamps:
        _record(run, t0, stamps[i])
    return run


def bench_batcher(rt, prompts, max_tokens, concurrency=1) -> Run:
    from model_repo.inflight import GenRequest, InflightBatcher
    run = Run()
    b = InflightBatcher(rt, max_batch_size=max(concurrency, 1)).start()
    try:
        lock = threading.Lock()

        def one(i, p):
            stamps, done = [], threading.Event()

            def emit(tokens, reason, msg):
                stamps.extend([time.perf_counter()] * len(tokens))
                if reason:
                    done.set()
            t0 = time.perf_counter()
            b.submit(GenRequest(f"b{i}", p, max_tokens, emit=emit))
            done.wait(600)
            with lock:
                _record(run, t0, stamps)
        run.wall = _fan_out(prompts, one, concurrency)
    finally:
        b.stop()
    return run


def bench_triton(url, texts, max_tokens, concurrency=1) -> Run:
    from deploy.client import LLMClient
    run = Run()
    lock = threading.Lock()

    def one(i, text):
        c = LLMClient(url, timeout_s=600)
        t0 = time.perf_counter()
        stamps = []
        for chunk in c.stream(text, max_tokens, raw=True):
            if chunk.num_output_tokens and len(stamps) < chunk.num_output_tokens:
                stamps.extend([time.perf_counter()] * (chunk.num_output_tokens - len(stamps)))
        with lock:
            _record(run, t0, stamps)
    run.wall = _fan_out(texts, one, concurrency)
    return run


def _fan_out(items, fn, concurrency) -> float:
    t0 = time.perf_counter()
    if concurrency <= 1:
        for i, x in enumerate(items):
            fn(i, x)
    else:
        threads = [threading.Thread(target=fn, args=(i, x)) for i, x in enumerate(items)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", help="engine directory (default: the tiny engine, made in a temp dir)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="repeats of the one-at-a-time comparison")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    from deploy.server import TritonServer
    from deploy.testing import make_tiny_engine
    from model_repo.generate import write_model_repo
    from model_repo.harmony import render_chat
    from model_repo.tokenizer import load_tokenizer
    from runtime import Runtime

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        engine = Path(args.engine) if args.engine else make_tiny_engine(Path(tmp) / "engine")
        tok = load_tokenizer(engine)
        # The same token ids on every path: Harmony chat prompts, rendered once, sent to Triton as raw text.
        texts, prompts = [], []
        for i in range(args.prompts):
            ids = render_chat(tok, f"Request {i}: describe a {['cat', 'ship', 'city', 'tree'][i % 4]} "
                                   f"in {i + 2} sentences.", "low")
            texts.append(tok.decode(ids))
            prompts.append(ids)
        assert [tok.encode(t) for t in texts] == prompts, "the rendered text must tokenize back to the same ids"

        repo = write_model_repo(engine, Path(tmp) / "repo", backend="reference",
                                max_batch_size=max(args.concurrency, 1))
        srv = TritonServer(repo, log_file=Path(tmp) / "server.log")
        t = time.perf_counter()
        srv.start(timeout_s=600)
        startup = time.perf_counter() - t
        try:
            rt = Runtime.from_dir(engine)
            bench_runtime(rt, prompts[:1], 4)                          # warm up this process
            bench_triton(srv.grpc_url, texts[:1], 4)
            # One at a time, interleaved (runtime, batcher, triton per prompt, for --rounds rounds) so that a
            # shared machine's load falls on every path alike.
            single = {"rt": Run(), "b": Run(), "tr": Run()}
            for _ in range(args.rounds):
                for p, text in zip(prompts, texts):
                    for key, fn in (("rt", lambda: bench_runtime(rt, [p], args.max_tokens)),
                                    ("b", lambda: bench_batcher(rt, [p], args.max_tokens)),
                                    ("tr", lambda: bench_triton(srv.grpc_url, [text], args.max_tokens))):
                        r = fn()
                        single[key].ttft += r.ttft
                        single[key].decode_tps += r.decode_tps
                        single[key].tokens += r.tokens
                        single[key].wall += r.wall
            rows = [single["rt"].row("runtime direct, batch 1"), single["b"].row("batcher in-process, 1 at a time"),
                    single["tr"].row("triton gRPC stream, 1 at a time")]
            if args.concurrency > 1:
                c = args.concurrency
                rows += [bench_runtime_batch(rt, prompts[:c], args.max_tokens).row(f"runtime direct, batch {c}"),
                         bench_batcher(rt, prompts[:c], args.max_tokens, c).row(f"batcher in-process, {c} at once"),
                         bench_triton(srv.grpc_url, texts[:c], args.max_tokens, c).row(f"triton gRPC, {c} streams")]
        finally:
            srv.stop()

    direct, triton = rows[0], rows[2]
    overhead = {"ttft_ms": triton["ttft_ms_p50"] - direct["ttft_ms_p50"],
                "per_token_ms": triton["ms_per_token"] - direct["ms_per_token"]}
    print(f"engine {engine.name if args.engine else 'tiny (temp)'}; {args.prompts} Harmony chat prompts of "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens; {args.max_tokens} generated tokens each "
          f"(greedy, no stop); server ready in {startup:.1f} s; 1 torch thread everywhere")
    hdr = f"{'path':34} {'reqs':>4} {'TTFT p50 ms':>11} {'TTFT max ms':>11} {'decode tok/s':>12} " \
          f"{'ms/token':>9} {'total tok/s':>11}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['path']:34} {r['requests']:>4} {r['ttft_ms_p50']:>11.1f} {r['ttft_ms_max']:>11.1f} "
              f"{r['decode_tok_s_p50']:>12.1f} {r['ms_per_token']:>9.2f} {r['total_tok_s']:>11.1f}")
    print(f"serving overhead (triton vs runtime direct, one at a time): TTFT {overhead['ttft_ms']:+.1f} ms, "
          f"{overhead['per_token_ms']:+.2f} ms per generated token")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "overhead": overhead, "startup_s": startup}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
