"""SIGTERM to serve-engine with streams in flight: every stream ends with an error the client sees, the server
stops within a few seconds without SIGKILL, and the exit status says what happened."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest

from deploy.client import LLMClient
from deploy.server import free_port
from tests.support import REPO
from tests.support.serving import assert_stopped_cleanly, make_tiny_engine

pytestmark = pytest.mark.reliability

ROOT = REPO


def test_sigterm_with_streams_in_flight(tmp_path):
    engine = make_tiny_engine(tmp_path / "engine", max_seq_len=4096, max_batch_size=8)
    grpc = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from deploy.serve_cli import serve_main; sys.exit(serve_main())",
                             str(engine), "--grpc-port", str(grpc), "--http-port", str(free_port()), "--metrics-port",
                             str(free_port()), "--log-file", str(tmp_path / "server.log"),
                             # Triton 2.51 spends the whole exit timeout on the BLS unload hang (tests/support/serving.py);
                             # a little more than the default leaves the other models time to unload on a busy machine.
                             "--drain-timeout", "5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outcomes: dict = {}
    started = threading.Semaphore(0)

    def stream(i, model):
        chunks = []
        try:
            LLMClient(f"127.0.0.1:{grpc}", model, timeout_s=120).generate(
                f"Story {i}: once upon a time", 3000, stream=True, raw=True,
                on_chunk=lambda c: (chunks.append(c), started.release() if len(chunks) == 1 else None))
            outcomes[i] = ("finished", len(chunks))
        except Exception as e:  # noqa: BLE001
            outcomes[i] = ("error", str(e))
            started.release()
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            if "serve-engine: ready" in line or time.monotonic() > deadline:
                break
        threads = [threading.Thread(target=stream, args=(i, "ensemble" if i % 2 else "tensorrt_llm_bls"))
                   for i in range(6)]
        for t in threads:
            t.start()
        for _ in threads:
            assert started.acquire(timeout=120)
        t0 = time.monotonic()
        proc.terminate()
        for t in threads:
            t.join(60)
        t_clients = time.monotonic() - t0
        out, _ = proc.communicate(timeout=60)
        t_exit = time.monotonic() - t0
        print(f"clients ended {t_clients:.1f} s, serve-engine exited {t_exit:.1f} s after SIGTERM", outcomes)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(outcomes) == 6 and all(kind == "error" for kind, _ in outcomes.values()), outcomes
    assert all("the server is shutting down" in msg for _, msg in outcomes.values()), outcomes
    assert t_clients < 3 and t_exit < 12, (t_clients, t_exit, out)
    assert "SIGKILL" not in out and proc.returncode == 0, out
    m = re.search(r"serve-engine: stopped on SIGTERM \(tritonserver status (-?\d+)\)", out)
    assert m, out
    assert_stopped_cleanly(int(m.group(1)), tmp_path / "server.log")
