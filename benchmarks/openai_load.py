"""Load against an OpenAI-compatible endpoint (ours: serve-engine --openai-port): tokens/s, time to first token and
inter-token latency (p50 / p99) at concurrency 1, 16 and 64, with the official `openai` client (async, streamed
completions), and optionally aiperf (NVIDIA's load generator, PyPI `aiperf`) against the same endpoint.

    python benchmarks/openai_load.py                               # the tiny engine, served for this run
    python benchmarks/openai_load.py --url http://127.0.0.1:9000/v1 --model gpt-oss-20b --aiperf
    from benchmarks.openai_load import openai_load                 # rows for bench_serving.py's table
    rows = openai_load("http://127.0.0.1:9000/v1", "tiny", concurrencies=(1, 16, 64))

Served here (no --url), the same levels also run straight against Triton's front model over gRPC (the peer), and
the table ends with the endpoint's tok/s ratio and added TTFT against it.

Per level, `requests` (default 2 x concurrency, at least 8) requests run with at most `concurrency` in flight; each
asks for exactly `max_tokens` tokens (ignore_eos) so levels compare like for like. TTFT: request sent -> first
token chunk. ITL: gaps between token chunks within a request (the endpoint sends one chunk per token). tok/s: all
generated tokens / the level's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "ROMEO: What light through yonder window breaks?"


def _pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


async def _one(client, model, prompt, max_tokens, out):
    t0 = time.perf_counter()
    stamps = []
    usage = None
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True})
    async for c in stream:
        if c.choices and c.choices[0].text:
            stamps.append(time.perf_counter())
        if c.usage is not None:
            usage = c.usage
    if stamps:
        out["ttft"].append(stamps[0] - t0)
        out["itl"] += [b - a for a, b in zip(stamps, stamps[1:])]
    out["tokens"] += usage.completion_tokens if usage else len(stamps)


async def _level(base_url, model, concurrency, requests, max_tokens, prompt):
    import openai
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    out = {"ttft": [], "itl": [], "tokens": 0}
    sem = asyncio.Semaphore(concurrency)

    async def guarded(i):
        async with sem:
            await _one(client, model, f"{prompt} ({i})", max_tokens, out)

    t0 = time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(requests)))
    wall = time.perf_counter() - t0
    await client.close()
    return {"path": "openai endpoint (openai client)", "concurrency": concurrency, "requests": requests,
            "tokens": out["tokens"], "tok_per_s": out["tokens"] / wall,
            "ttft_ms_p50": 1e3 * _pct(out["ttft"], 50), "ttft_ms_p99": 1e3 * _pct(out["ttft"], 99),
            "itl_ms_p50": 1e3 * _pct(out["itl"], 50), "itl_ms_p99": 1e3 * _pct(out["itl"], 99)}


def openai_load(base_url: str, model: str, concurrencies=(1, 16, 64), max_tokens: int = 32,
                requests: int | None = None, prompt: str = PROMPT) -> list[dict]:
    """One row per concurrency level (see the module docstring)."""
    asyncio.run(_level(base_url, model, 1, 2, max_tokens, prompt))      # warm-up: first-request costs
    rows = []
    for c in concurrencies:
        n = requests or max(8, 2 * c)
        rows.append(asyncio.run(_level(base_url, model, c, n, max_tokens, prompt)))
    return rows


def triton_load(grpc_url: str, concurrencies=(1, 16, 64), max_tokens: int = 32, requests: int | None = None,
                prompt: str = PROMPT) -> list[dict]:
    """The peer: the same load straight to Triton's front model over gRPC streams (deploy.client, raw prompts, one
    thread per request in flight), so the endpoint's cost shows as a ratio measured in the same run."""
    import concurrent.futures as cf
    import threading
    from deploy.client import LLMClient
    rows = []
    for c in concurrencies:
        n = requests or max(8, 2 * c)
        out = {"ttft": [], "itl": [], "tokens": 0}
        lock = threading.Lock()

        def one(i):
            stamps = []
            t0 = time.perf_counter()
            r = LLMClient(grpc_url).generate(f"{prompt} ({i})", max_tokens, stream=True, raw=True, temperature=0.0,
                                             on_chunk=lambda ch: stamps.append(time.perf_counter()) if ch.text else None)
            with lock:
                if stamps:
                    out["ttft"].append(stamps[0] - t0)
                    out["itl"] += [b - a for a, b in zip(stamps, stamps[1:])]
                out["tokens"] += r.num_output_tokens or 0

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(c) as pool:
            list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
        rows.append({"path": "triton gRPC (tensorrt_llm_bls)", "concurrency": c, "requests": n,
                     "tokens": out["tokens"], "tok_per_s": out["tokens"] / wall,
                     "ttft_ms_p50": 1e3 * _pct(out["ttft"], 50), "ttft_ms_p99": 1e3 * _pct(out["ttft"], 99),
                     "itl_ms_p50": 1e3 * _pct(out["itl"], 50), "itl_ms_p99": 1e3 * _pct(out["itl"], 99)})
    return rows


def aiperf_load(base_url: str, model: str, tokenizer_dir: str, concurrency: int, requests: int, max_tokens: int,
                artifacts: Path) -> dict | None:
    """aiperf against the endpoint (streamed completions, fixed output length); None where aiperf is not installed.
    The row holds aiperf's own figures from its JSON export."""
    exe = shutil.which("aiperf") or str(Path(sys.executable).parent / "aiperf")
    if not Path(exe).exists():
        return None
    out = artifacts / f"c{concurrency}"
    cmd = [exe, "profile", "--model", model, "--url", base_url.removesuffix("/v1"), "--endpoint-type", "completions",
           "--streaming", "--concurrency", str(concurrency), "--request-count", str(requests),
           "--synthetic-input-tokens-mean", "16", "--output-tokens-mean", str(max_tokens),
           "--extra-inputs", "ignore_eos:true", "--tokenizer", tokenizer_dir, "--artifact-dir", str(out),
           "--ui-type", "none"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"aiperf failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    export = out / "profile_export_aiperf.json"
    if not export.is_file():
        raise RuntimeError(f"aiperf wrote no {export.name} in {out}")
    m = json.loads(export.read_text())

    def stat(name, key):
        v = m.get(name) or {}
        return v.get(key, float("nan")) if isinstance(v, dict) else float("nan")
    return {"path": "openai endpoint (aiperf)", "concurrency": concurrency, "requests": requests,
            "tokens": None, "tok_per_s": stat("output_token_throughput", "avg"),
            "ttft_ms_p50": stat("time_to_first_token", "p50"), "ttft_ms_p99": stat("time_to_first_token", "p99"),
            "itl_ms_p50": stat("inter_token_latency", "p50"), "itl_ms_p99": stat("inter_token_latency", "p99"),
            "command": " ".join(cmd)}


def print_table(rows) -> None:
    hdr = f"{'path':34} {'conc':>4} {'reqs':>5} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['path']:34} {r['concurrency']:>4} {r['requests']:>5} {r['tok_per_s']:>9.1f} {r['ttft_ms_p50']:>9.1f} "
              f"{r['ttft_ms_p99']:>9.1f} {r['itl_ms_p50']:>8.2f} {r['itl_ms_p99']:>8.2f}")
    print("(ms; tok/s: all generated tokens / wall time of the level)")
    for r in rows:
        if "vs_triton_tok_per_s" in r:
            print(f"openai endpoint vs triton gRPC at concurrency {r['concurrency']}: tok/s x{r['vs_triton_tok_per_s']:.2f}, "
                  f"TTFT p50 {r['vs_triton_ttft_ms_p50']:+.1f} ms")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an endpoint's base URL (…/v1); default: serve the tiny engine for this run")
    p.add_argument("--model", default="tiny")
    p.add_argument("--engine", help="serve this engine directory instead of the tiny one")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, help="per level (default max(8, 2 x concurrency))")
    p.add_argument("--aiperf", action="store_true", help="also run aiperf at each level")
    p.add_argument("--tokenizer", help="for aiperf: a folder with tokenizer.json (default: the engine's)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="openai-load-") as tmp:
        srv = None
        engine = Path(args.engine) if args.engine else None
        base = args.url
        if base is None:
            from deploy.openai.serve import OpenAIServer
            from deploy.server import TritonServer, free_port
            from tests.support.serving import make_tiny_engine
            from model_repo.write import write_model_repo
            engine = engine or make_tiny_engine(Path(tmp) / "engine", max_batch_size=max(args.concurrency))
            repo = write_model_repo(engine, Path(tmp) / "triton")
            triton = TritonServer(repo, log_file=Path(tmp) / "triton.log").start(300)
            srv = OpenAIServer(repo, triton.grpc_url, port=free_port()).start()
            base, args.model = srv.url, srv.model.name
        try:
            rows = openai_load(base, args.model, args.concurrency, args.max_tokens, args.requests)
            if srv is not None:
                peer = triton_load(triton.grpc_url, args.concurrency, args.max_tokens, args.requests)
                for o, t in zip(rows, peer):
                    o["vs_triton_tok_per_s"] = o["tok_per_s"] / t["tok_per_s"]
                    o["vs_triton_ttft_ms_p50"] = o["ttft_ms_p50"] - t["ttft_ms_p50"]
                rows += peer
            if args.aiperf:
                tok = args.tokenizer or (str(engine) if engine else None)
                for c in args.concurrency:
                    row = aiperf_load(base, args.model, tok, c, args.requests or max(8, 2 * c), args.max_tokens,
                                      Path(tmp) / "aiperf")
                    if row is None:
                        print("aiperf is not installed (pip install aiperf)")
                        break
                    rows.append(row)
        finally:
            if srv is not None:
                srv.stop()
                triton.stop()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
