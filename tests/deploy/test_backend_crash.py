"""A crashed backend fails loudly (deploy/watchdog.py, serve-engine --max-restarts): on the real server, the
`tensorrt_llm` model's stub is killed mid-stream (SIGKILL, then SIGSEGV) under a gRPC client (the ensemble, through
the BLS model) and an OpenAI client. Every request in flight must end with an error within 5 s of the kill, the
gRPC one naming the model; readiness (Triton's /v2/health/ready and the OpenAI /health) must turn false within
5 s; the server comes back after the first crash and serve-engine exits 3 after the second (--max-restarts 1)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy.client import LLMClient
from deploy.watchdog import EXIT_STATUS_AFTER_RESTARTS, stub_processes

pytestmark = pytest.mark.reliability
# max_seq_len 4096: streams long enough to be killed in the middle; the default executor (ONNX Runtime here).
SERVED = dict(max_batch_size=4, max_seq_len=4096, extra_args=("--max-restarts", "1"))
CLIENT_TIMEOUT_S = 60
DEADLINE_S = 5.0


def _children(pid: int, name: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
            if int(rest.split()[1]) == pid and comm.startswith(name[:15]):
                out.append(int(proc.name))
    return out


def _stub_pid(served) -> int:
    [triton] = _children(served.proc.pid, "tritonserver")
    pids = [pid for pid, (model, _) in stub_processes(triton).items() if model == "tensorrt_llm"]
    assert len(pids) == 1, stub_processes(triton)
    return pids[0]


def _triton_ready(served) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.http}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class _Run(threading.Thread):
    """One streaming request on its own thread: when its first token came, when and how it ended."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.first, self.ended, self.error = fn, threading.Event(), None, None

    def run(self):
        try:
            self.fn(self.first)
        except Exception as e:  # noqa: BLE001 - what the test looks at
            self.error = e
        self.ended = time.monotonic()


def _grpc_stream(served):
    def fn(first):
        c = LLMClient(served.grpc_url, timeout_s=CLIENT_TIMEOUT_S)
        for _ in c.stream("Tell me everything about lighthouses.", 3500, raw=True, end_id=-1):
            first.set()
    return _Run(fn)


def _openai_stream(served):
    def fn(first):
        client = served.openai_client(CLIENT_TIMEOUT_S)
        for _ in client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=3500, stream=True,
                                           extra_body={"ignore_eos": True}):
            first.set()
    return _Run(fn)


def _crash_mid_stream(served, sig) -> tuple[list, float]:
    runs = [_grpc_stream(served), _openai_stream(served)]
    for r in runs:
        r.start()
    for r in runs:
        assert r.first.wait(60), f"no token before the kill ({r.error})"
    os.kill(_stub_pid(served), sig)
    t_kill = time.monotonic()
    not_ready = {}
    while time.monotonic() - t_kill < DEADLINE_S and len(not_ready) < 2:
        if "triton" not in not_ready and not _triton_ready(served):
            not_ready["triton"] = time.monotonic() - t_kill
        if "openai" not in not_ready and served.status() != 200:
            not_ready["openai"] = time.monotonic() - t_kill
        time.sleep(0.05)
    for r in runs:
        r.join(DEADLINE_S)
    return runs, t_kill, not_ready


def _check(runs, t_kill, not_ready):
    grpc, oa = runs
    print(f"\nended after the kill: grpc {grpc.ended - t_kill:.2f} s, openai {oa.ended - t_kill:.2f} s; readiness "
          f"false after: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(not_ready.items())))
    for r in runs:
        assert r.ended is not None and r.ended - t_kill < DEADLINE_S, "a request was left waiting after the crash"
        assert r.error is not None, "a request ended without an error after its backend died"
    assert "tensorrt_llm" in str(grpc.error), grpc.error
    assert "tensorrt_llm" in str(oa.error) or "crashed" in str(oa.error), oa.error
    assert set(not_ready) == {"triton", "openai"}, f"readiness still true {DEADLINE_S} s after the crash"


def test_killed_stub_fails_requests_then_restarts_then_exits_3(served):
    runs, t_kill, not_ready = _crash_mid_stream(served, signal.SIGKILL)
    _check(runs, t_kill, not_ready)
    served.wait_ready(120)                                   # restarted (1 of 1) and answering again
    assert "restarting tritonserver (1 of 1)" in served.out.read_text()
    runs, t_kill, not_ready = _crash_mid_stream(served, signal.SIGSEGV)
    _check(runs, t_kill, not_ready)
    assert served.proc.wait(30) == EXIT_STATUS_AFTER_RESTARTS
    assert "restart(s) spent (--max-restarts 1)" in served.out.read_text()
