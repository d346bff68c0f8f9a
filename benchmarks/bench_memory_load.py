"""Memory of every served process over rounds of concurrent heavy requests (issue #22 item 1): serve-engine on the
tiny engine (a real tritonserver, and the OpenAI endpoint in serve-engine's own process), a warm-up round, then
`--rounds` rounds of `--concurrent` concurrent requests of each kind, after each round the resident memory per
process and the Python backend's /dev/shm regions, and the ratio to the post-warm-up baseline.

    flock /work/scratch/heavy.lock .venv/bin/python benchmarks/bench_memory_load.py \
        [--rounds 5] [--concurrent 16] [--prompt-tokens 3900] [--kinds context,logprobs,long,openai]

Kinds (each a batch of --concurrent requests, one after the other within a round):
  context   gRPC, raw prompt of --prompt-tokens, return_context_logits (prompt_len x vocab float32 per request)
  logprobs  gRPC, the same prompt, return_log_probs, --max-tokens generated
  long      gRPC, the same prompt, text only
  openai    the OpenAI endpoint's /v1/completions with logprobs, the same prompt (serve-engine's process)

RSS is VmRSS (what `top` shows; includes the shared-memory pages a process touched), Anon its private part
(RssAnon). `shm` is the blocks the server's Python-backend regions occupy in /dev/shm. Extra serve-engine flags
after `--`, e.g. `-- --executor reference`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.client import generate_many  # noqa: E402
from deploy.server import SHM_DIR, free_port  # noqa: E402
from tests.support.serving import make_tiny_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            out[key] = int(value.split()[0]) // 1024          # MiB
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def served_processes(serve_pid: int) -> dict[str, int]:
    """name -> pid: serve-engine (the OpenAI endpoint), tritonserver and each Python-backend stub by model."""
    procs = {"serve-engine": serve_pid}
    todo = _children(serve_pid)
    while todo:
        pid = todo.pop()
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = Path(argv[0].decode()).name
        if name == "triton_python_backend_stub":
            # argv: stub model.py shm-region-name shm-size growth parent-pid lib-dir ipc-size model-instance-name ...
            name = next((a.decode() for a in argv if a.endswith(b"_0_0")), name)
        procs[name] = pid
        todo += _children(pid)
    return procs


def shm_prefix(procs: dict[str, int]) -> str | None:
    pid = procs.get("tritonserver")
    if pid is None:
        return None
    for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
        a = arg.decode()
        if "shm-region-prefix-name=" in a:
            return a.split("shm-region-prefix-name=", 1)[1]
    return None


def shm_mib(prefix: str | None) -> float:
    if not prefix:
        return 0.0
    total = 0
    for f in Path(SHM_DIR).glob(prefix + "*"):
        try:
            total += f.stat().st_blocks * 512
        except OSError:
            pass
    return total / 2**20


def sample(serve_pid: int) -> dict[str, dict[str, int] | float]:
    procs = served_processes(serve_pid)
    row: dict = {}
    for name, pid in procs.items():
        try:
            row[name] = _status(pid)
        except OSError:
            pass
    row["/dev/shm"] = shm_mib(shm_prefix(procs))
    return row


def prompt_of(tokenizer, n_tokens: int, i: int) -> str:
    """A prompt of about n_tokens tokens (distinct per request, so no two are the same text)."""
    words = "the king and the queen walked to the river and sat down by the old mill ".split()
    text, n = f"{i} ", 0
    while True:
        step = " ".join(words) + " "
        if len(tokenizer.encode(text + step)) > n_tokens:
            break
        text += step
    for w in words:
        if len(tokenizer.encode(text + w + " ")) > n_tokens:
            break
        text += w + " "
    return text


def openai_batch(port: int, prompts: list[str], max_tokens: int) -> None:
    errors = []

    def one(p):
        body = json.dumps({"model": "tiny", "prompt": p, "max_tokens": max_tokens}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                json.loads(r.read())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} OpenAI requests failed, first: {errors[0]}")


def run_round(kinds, grpc_url, openai_port, prompts, max_tokens) -> None:
    for kind in kinds:
        if kind == "context":
            res = generate_many(grpc_url, prompts, max_tokens=2, raw=True, return_context_logits=True)
            assert all(r.context_logits is not None for r in res), "a response without context logits"
        elif kind == "logprobs":
            res = generate_many(grpc_url, prompts, max_tokens=max_tokens, raw=True, return_log_probs=True)
            assert all(r.output_log_probs for r in res), "a response without log probs"
        elif kind == "long":
            generate_many(grpc_url, prompts, max_tokens=max_tokens, raw=True)
        elif kind == "openai":
            openai_batch(openai_port, prompts, max_tokens)
        else:
            raise SystemExit(f"--kinds: unknown kind {kind!r} (context, logprobs, long, openai)")


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve-engine exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("serve-engine not ready")


def print_table(rows: list[tuple[str, dict]], out=sys.stdout) -> None:
    base = rows[0][1]
    names = [n for n in base if n != "/dev/shm"]
    print(f"{'round':>8}  " + "  ".join(f"{n[:22]:>22}" for n in names) + f"  {'/dev/shm':>14}  {'total RSS':>14}",
          file=out)
    for label, r in rows:
        cells = []
        for n in names:
            s = r.get(n, {})
            b = base[n]["VmRSS"] or 1
            cells.append(f"{s.get('VmRSS', 0):6d} ({s.get('RssAnon', 0):5d}) x{s.get('VmRSS', 0) / b:4.2f}")
        tot = sum(r[n]["VmRSS"] for n in names if n in r)
        btot = sum(base[n]["VmRSS"] for n in names)
        shm, bshm = r["/dev/shm"], base["/dev/shm"] or 1
        print(f"{label:>8}  " + "  ".join(f"{c:>22}" for c in cells)
              + f"  {shm:6.0f} x{shm / bshm:5.2f}  {tot:6d} x{tot / btot:4.2f}", file=out)
    print("cells: VmRSS MiB (RssAnon MiB) x ratio to the post-warm-up baseline", file=out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=3900)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--kinds", default="context,logprobs,long,openai")
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--settle-s", type=float, default=2.0, help="wait after each round before sampling")
    p.add_argument("serve_args", nargs="*", help="extra serve-engine flags (after --)")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        engine = make_tiny_engine(Path(tmp) / "engine", max_seq_len=a.max_seq_len, max_batch_size=a.concurrent)
        grpc, http, metrics, oport = free_port(), free_port(), free_port(), free_port()
        cmd = [sys.executable, "-c", "import sys; from deploy.serve_cli import serve_main; sys.exit(serve_main())",
               str(engine), "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
               "--openai-port", str(oport), "--log-file", str(Path(tmp) / "triton.log"), *a.serve_args]
        out = open(Path(tmp) / "serve.out", "w")
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(oport, proc)
            from model_repo.tokenizer import load_tokenizer
            tok = load_tokenizer(engine)
            prompts = [prompt_of(tok, a.prompt_tokens, i) for i in range(a.concurrent)]
            n_tok = len(tok.encode(prompts[0]))
            grpc_url = f"127.0.0.1:{grpc}"
            start = sample(proc.pid)
            t0 = time.monotonic()
            run_round(kinds, grpc_url, oport, prompts, a.max_tokens)
            time.sleep(a.settle_s)
            rows = [("warm-up", sample(proc.pid))]
            print(f"warm-up round {time.monotonic() - t0:.1f} s", flush=True)
            for i in range(a.rounds):
                t0 = time.monotonic()
                run_round(kinds, grpc_url, oport, prompts, a.max_tokens)
                time.sleep(a.settle_s)
                rows.append((f"{i + 1}", sample(proc.pid)))
                print(f"round {i + 1}: {time.monotonic() - t0:.1f} s", flush=True)
        finally:
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            out.close()
            if proc.returncode not in (0, None):
                print((Path(tmp) / "serve.out").read_text()[-3000:], file=sys.stderr)
    ctx_mib = n_tok * tok.vocab_size * 4 / 2**20 if hasattr(tok, "vocab_size") else float("nan")
    print(f"\n{a.concurrent} concurrent requests per kind ({', '.join(kinds)}), prompts of {n_tok} tokens"
          f" ({ctx_mib:.0f} MiB of context logits each), {a.rounds} rounds")
    print_table(rows)
    print("before the warm-up (MiB VmRSS/RssAnon): " + ", ".join(
        f"{n} {v['VmRSS']}/{v['RssAnon']}" for n, v in start.items() if n != "/dev/shm")
        + f", /dev/shm {start['/dev/shm']:.0f}")
    worst = max(r[n]["VmRSS"] / rows[0][1][n]["VmRSS"] for _, r in rows[1:] for n in rows[0][1]
                if n != "/dev/shm" and n in r)
    print(f"worst ratio to baseline: x{worst:.2f} ({'within' if worst <= 1.10 else 'OVER'} the 10% bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
