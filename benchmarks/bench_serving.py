"""Serving speed: tokens/s, time to first token and inter-token latency at several concurrencies, for the runtime
called directly and for the served models, same engine, same prompts, same run.

    python benchmarks/bench_serving.py                                   # the tiny engine, made in a temp dir
    python benchmarks/bench_serving.py --model h512                      # a random 4-layer hidden-512 model
    python benchmarks/bench_serving.py --engine DIR --concurrency 1,16,64 --max-tokens 64 --json out.json
    python benchmarks/bench_serving.py --executors onnxruntime,reference --concurrency 1,16   # both executors

Each executor of --executors (default onnxruntime,reference) gets its own rows: the runtime on it and a server whose
tensorrt_llm model runs it (write_model_repo(executor=...)). "vs run-engine" is tok/s against the generate row at
concurrency 1 of run-engine's default executor (runtime.executors.choice.choose_executor's auto for these
prompts), the one-stream goal's peer (>= 0.9); "x c=1" the 16-stream goal (>= 3). ONNX Runtime runs one
intra-op thread and torch one thread everywhere, as the served model does (cpu_threads 1): like for like.

Targets (rows), each a small class in TARGETS below; a new way in (another endpoint, another load generator) is
one more class with `start`, `generate` and `close`, appended to TARGETS:
- generate:         Runtime.generate_stream: at concurrency C the C clients' prompts as one static batch per round
                    (at C = 1 the runtime called directly, one request at a time);
- runtime:          runtime.scheduler.Scheduler in this process (what `generate` and the served model run), C
                    client threads submitting to it;
- triton ensemble:  tritonserver, the `ensemble` model over gRPC streams (one stream per client thread, reused),
                    raw prompts, end_id -1;
- triton bls:       the same through `tensorrt_llm_bls` (one model hop fewer), with --targets.
Every request decodes exactly --max-tokens tokens (no end token, greedy); at each concurrency C, C client threads
send --requests-per-client requests each, back to back. Columns: tok/s = all tokens / wall time; TTFT = request
sent -> first token; ITL = per request (last token - first token) / (tokens - 1), as genai-perf and aiperf
report it; p50 / p99 over requests. "vs generate" is tok/s against the generate row at the same concurrency, and
"x c=1" against the same target at concurrency 1. At concurrency 1 the targets take turns request by request (more
clients: level by level), so a shared machine's load falls on every target alike; each target's answers are checked against the runtime's.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class Prompt:
    ids: list           # token ids (the runtime's input)
    text: str           # the same ids as text (the served models' raw_prompt input)


@dataclass
class Sample:
    sent: float
    stamps: list        # arrival time of each generated token
    ids: list           # the generated tokens


@dataclass
class Level:
    target: str
    concurrency: int
    samples: list = field(default_factory=list)
    wall: float = 0.0

    def row(self) -> dict:
        ttft = [s.stamps[0] - s.sent for s in self.samples if s.stamps]
        itl = [(s.stamps[-1] - s.stamps[0]) / (len(s.stamps) - 1) for s in self.samples if len(s.stamps) > 1]
        tokens = sum(len(s.stamps) for s in self.samples)
        return {"target": self.target, "concurrency": self.concurrency, "requests": len(self.samples),
                "tokens": tokens, "tok_s": tokens / self.wall if self.wall else float("nan"),
                "ttft_ms_p50": 1000 * _pct(ttft, 50), "ttft_ms_p99": 1000 * _pct(ttft, 99),
                "itl_ms_p50": 1000 * _pct(itl, 50), "itl_ms_p99": 1000 * _pct(itl, 99)}


def _pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# -- targets ---------------------------------------------------------------------------------------------------
class Target:
    """One way of reaching the model. `generate` runs on a client thread (several at once at concurrency > 1)."""
    name = "?"

    def start(self, ctx: "Context") -> None:
        pass

    def client(self):
        """Per client thread state (a connection), passed back to generate."""
        return None

    def generate(self, conn, prompt: Prompt, max_tokens: int) -> Sample:
        raise NotImplementedError

    def close_client(self, conn) -> None:
        pass

    def close(self) -> None:
        pass


class RuntimeTarget(Target):
    name = "runtime"

    def start(self, ctx):
        from runtime.scheduler import Scheduler
        self.scheduler = Scheduler(ctx.runtime.model, max_batch_size=ctx.max_batch_size).start()

    def generate(self, conn, prompt, max_tokens):
        from runtime.sampling import SamplingParams
        from runtime.scheduler import Request
        stamps, ids, done = [], [], threading.Event()

        def emit(tokens, reason, message):
            now = time.perf_counter()
            stamps.extend([now] * len(tokens))
            ids.extend(tokens)
            if reason is not None:
                done.set()
        sent = time.perf_counter()
        self.scheduler.submit(Request(uuid.uuid4().hex, prompt.ids, SamplingParams(max_tokens=max_tokens,
                                                                                  stop_token_ids=()), emit=emit))
        done.wait(600)
        return Sample(sent, stamps, ids)

    def close(self):
        self.scheduler.stop()


class GenerateTarget(Target):
    """Runtime.generate_stream, the runtime's whole-batch call: the C clients' requests of one round go in as one
    batch (at C = 1: one request at a time, the runtime called directly)."""
    name = "generate"

    def start(self, ctx):
        self.rt = ctx.runtime
        self.lock = threading.Lock()
        self.batch: list = []
        self.clients = 0

    def run_batch(self, prompts, max_tokens) -> list:
        from runtime.sampling import SamplingParams
        stamps = [[] for _ in prompts]
        ids = [[] for _ in prompts]
        sent = time.perf_counter()
        for ev in self.rt.generate_stream([p.ids for p in prompts], SamplingParams(max_tokens=max_tokens,
                                                                                    stop_token_ids=())):
            stamps[ev.index].append(time.perf_counter())
            ids[ev.index].append(ev.token_id)
        return [Sample(sent, s, i) for s, i in zip(stamps, ids)]


class TritonTarget(Target):
    """tritonclient gRPC streams, one per client thread, reused for its requests (as perf_analyzer does)."""

    def __init__(self, model: str):
        self.model = model
        self.name = f"triton {'ensemble' if model == 'ensemble' else 'bls'}"

    def start(self, ctx):
        self.url = ctx.server.grpc_url

    def client(self):
        import tritonclient.grpc as grpcclient
        c = grpcclient.InferenceServerClient(self.url)
        q: queue.Queue = queue.Queue()
        c.start_stream(callback=lambda result, error: q.put((time.perf_counter(), result, error)))
        return c, q

    def generate(self, conn, prompt, max_tokens):
        import numpy as np
        from deploy.client import infer_inputs
        c, q = conn
        arrays = {"text_input": np.array([[prompt.text.encode()]], dtype=np.object_),
                  "max_tokens": np.array([[max_tokens]], dtype=np.int32), "stream": np.array([[True]]),
                  "raw_prompt": np.array([[True]]), "end_id": np.array([[-1]], dtype=np.int32)}
        stamps, ids = [], []
        sent = time.perf_counter()
        c.async_stream_infer(self.model, infer_inputs(arrays), request_id=uuid.uuid4().hex,
                             enable_empty_final_response=True)
        while True:
            t, result, error = q.get(timeout=600)
            if error is not None:
                raise RuntimeError(f"{self.name}: {error}")
            resp = result.get_response()
            if resp.outputs:
                out = result.as_numpy("output_ids")
                if out is not None:
                    new = out.reshape(-1).tolist()
                    ids += new
                    stamps += [t] * len(new)
            if resp.parameters["triton_final_response"].bool_param:
                return Sample(sent, stamps, ids)

    def close_client(self, conn):
        c, _ = conn
        c.stop_stream()
        c.close()


# Rows of the table, in order. Other endpoints and load generators go here.
TARGETS = {"generate": GenerateTarget, "runtime": RuntimeTarget, "ensemble": lambda: TritonTarget("ensemble"),
           "bls": lambda: TritonTarget("tensorrt_llm_bls")}
DEFAULT_TARGETS = ("generate", "runtime", "ensemble")


@dataclass
class Context:
    engine: Path
    runtime: object
    server: object
    max_batch_size: int


def run_level(target: Target, prompts: list, concurrency: int, per_client: int, max_tokens: int) -> Level:
    level = Level(target.name, concurrency)
    if isinstance(target, GenerateTarget):          # one batch per round, no client threads
        t0 = time.perf_counter()
        for j in range(per_client):
            batch = [prompts[(k * per_client + j) % len(prompts)] for k in range(concurrency)]
            level.samples += list(zip(batch, target.run_batch(batch, max_tokens)))
        level.wall = time.perf_counter() - t0
        return level
    lock = threading.Lock()
    errors = []

    def client(k):
        conn = target.client()
        try:
            for j in range(per_client):
                p = prompts[(k * per_client + j) % len(prompts)]
                s = target.generate(conn, p, max_tokens)
                with lock:
                    level.samples.append((p, s))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            target.close_client(conn)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return level


def _interleaved(targets, prompts, concurrency, per_client, max_tokens) -> list:
    """One Level per target. One client: request by request, target after target (load that comes and goes
    falls on every target alike); more clients: target after target, per_client rounds each."""
    if concurrency > 1:
        return [run_level(t, prompts, concurrency, per_client, max_tokens) for t in targets]
    levels = [Level(t.name, 1) for t in targets]
    for j in range(per_client):
        for t, level in zip(targets, levels):
            one = run_level(t, [prompts[j % len(prompts)]], 1, 1, max_tokens)
            level.samples += one.samples
            level.wall += one.wall
    return levels


# -- models ------------------------------------------------------------------------------------------------------
def make_engine(kind: str, dest: Path) -> Path:
    """tiny: the shipped trained tiny model. h512: random weights, 4 layers, hidden 512 (the tiny tokenizer)."""
    from tests.support.serving import ASSETS, make_tiny_engine
    if kind == "tiny":
        return make_tiny_engine(dest, max_seq_len=1024, max_batch_size=64)
    from benchmarks.bench_runtime import save_random_hf
    from spec.manifest import MANIFEST_FILE
    from spec.registry.models import ModelConfig
    cfg = ModelConfig(name="h512", num_layers=4, hidden_size=512, head_dim=64, num_q_heads=8, num_kv_heads=2,
                      vocab_size=4096, mlp="moe", intermediate_size=512, num_experts=16, experts_per_token=4,
                      sliding_window=128, rope_scaling_factor=32.0, rope_original_max_position=4096)
    save_random_hf(cfg, dest)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(ASSETS / f, dest / f)
    (dest / MANIFEST_FILE).write_text(json.dumps({
        "schema_version": 1, "model": "h512", "gpu": "cpu", "quant": "bf16", "tp": 1, "ep": 1,
        "max_seq_len": 1024, "max_batch_size": 64}, indent=2) + "\n", encoding="utf-8")
    return dest


def make_prompts(engine: Path, n: int) -> list:
    from model_repo.harmony import render_chat
    from model_repo.tokenizer import load_tokenizer
    tok = load_tokenizer(engine)
    out = []
    for i in range(n):
        ids = render_chat(tok, f"Request {i}: describe a {['cat', 'ship', 'city', 'tree'][i % 4]} "
                               f"in {i % 7 + 2} sentences.", "low")
        text = tok.decode(ids)
        assert tok.encode(text) == ids, "the rendered text must tokenize back to the same ids"
        out.append(Prompt(ids, text))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "h512"), default="tiny", help="the engine to make (no --engine)")
    ap.add_argument("--engine", help="an existing engine directory instead")
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    ap.add_argument("--requests-per-client", default="16,2,1",
                    help="requests each client sends, per concurrency (one value for all, or one per level)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"of {', '.join(TARGETS)}")
    ap.add_argument("--max-batch-size", type=int, help="in-flight batch rows (default: the largest concurrency)")
    ap.add_argument("--executors", default="onnxruntime,reference",
                    help="executors to serve and run, each with its own rows (runtime/executors/choice.py names)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    levels = [int(x) for x in args.concurrency.split(",")]
    per = [int(x) for x in args.requests_per_client.split(",")]
    per = per * len(levels) if len(per) == 1 else per
    if len(per) != len(levels):
        ap.error("--requests-per-client needs one value or one per --concurrency level")
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")

    import os

    import torch
    torch.set_num_threads(1)          # what the served model uses (cpu_threads 1): like for like
    os.environ["GPTOSS_ORT_THREADS"] = "1"
    from deploy.server import TritonServer
    from model_repo.write import write_model_repo
    from runtime.executors import load_runtime
    from runtime.executors.choice import choose_executor

    max_batch = args.max_batch_size or max(levels)
    rows, mismatches = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        engine = Path(args.engine) if args.engine else make_engine(args.model, Path(tmp) / args.model)
        prompts = make_prompts(engine, 64)
        default = choose_executor(engine, "auto", tokens=max(len(p.ids) for p in prompts))
        print(f"run-engine's default: {default.line()}", flush=True)
        reference: dict = {}
        for ex in executors:
            server = None
            if any(n not in ("runtime", "generate") for n in names):
                repo = write_model_repo(engine, Path(tmp) / f"repo-{ex}", executor=ex, max_batch_size=max_batch,
                                        cpu_threads=1)
                server = TritonServer(repo, log_file=Path(tmp) / f"server-{ex}.log")
                t = time.perf_counter()
                server.start(timeout_s=600)
                print(f"{ex}: server ready in {time.perf_counter() - t:.1f} s", flush=True)
            ctx = Context(engine, load_runtime(engine, ex, log=lambda line: None), server, max_batch)
            targets = [TARGETS[n]() for n in names]
            try:
                for t in targets:
                    t.start(ctx)
                    run_level(t, prompts[:2], 1, 1, 4)                      # warm up
                for c, n in zip(levels, per):
                    for t, level in zip(targets, _interleaved(targets, prompts, c, n, args.max_tokens)):
                        for p, s in level.samples:
                            key = tuple(p.ids)
                            reference.setdefault(key, s.ids)        # the first executor's runtime answers
                            if s.ids != reference[key]:
                                name = f"{ex} {t.name}"
                                mismatches[name] = mismatches.get(name, 0) + 1
                        level.samples = [s for _, s in level.samples]
                        row = level.row()
                        row["executor"] = ex
                        rows.append(row)
                        print(f"  {ex:12} {row['target']:18} c={c:<3} {row['tok_s']:8.1f} tok/s", flush=True)
            finally:
                for t in targets:
                    t.close()
                if server is not None:
                    server.stop()

    base = {(r["executor"], r["concurrency"]): r["tok_s"] for r in rows if r["target"] == "generate"}
    one = {(r["executor"], r["target"]): r["tok_s"] for r in rows if r["concurrency"] == min(levels)}
    run_engine = base.get((default.name, min(levels)), float("nan"))
    for r in rows:
        r["vs_generate"] = base.get((r["executor"], r["concurrency"]), float("nan"))
        r["vs_generate"] = r["tok_s"] / r["vs_generate"]
        r["vs_c1"] = r["tok_s"] / one.get((r["executor"], r["target"]), float("nan"))
        r["vs_run_engine"] = r["tok_s"] / run_engine
    print(f"\nengine {engine.name if args.engine else args.model}; {len(prompts)} Harmony chat prompts of "
          f"{min(len(p.ids) for p in prompts)}-{max(len(p.ids) for p in prompts)} tokens; {args.max_tokens} tokens "
          f"each (greedy, no end token); in-flight batch {max_batch}; 1 torch / ONNX Runtime thread; run-engine's "
          f"default executor {default.name} (generate c={min(levels)}: {run_engine:.1f} tok/s); "
          f"answers differing from the first executor's runtime: {mismatches or 'none'}")
    hdr = (f"{'executor':12} {'target':16} {'conc':>4} {'reqs':>4} {'tok/s':>8} {'vs generate':>11} "
           f"{'vs run-engine':>13} {'x c=1':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}   (ms)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['executor']:12} {r['target']:16} {r['concurrency']:>4} {r['requests']:>4} {r['tok_s']:>8.1f} "
              f"{r['vs_generate']:>11.2f} {r['vs_run_engine']:>13.2f} {r['vs_c1']:>6.2f} {r['ttft_ms_p50']:>9.1f} "
              f"{r['ttft_ms_p99']:>9.1f} {r['itl_ms_p50']:>8.2f} {r['itl_ms_p99']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "mismatches": mismatches}, indent=1))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
