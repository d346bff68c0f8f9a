"""serve-engine as users run it: a subprocess that starts a real tritonserver, waits until ready, serves, and stops
cleanly on SIGINT / SIGTERM leaving no shared-memory files; and the README demo (--chat)."""

from __future__ import annotations

import glob
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.client import LLMClient
from deploy.server import free_port
from model_repo.write import write_model_repo
from tests.support import REPO

ROOT = REPO


def _serve(args, log):
    cmd = [sys.executable, "-c", "import sys; from deploy.serve_cli import serve_main; sys.exit(serve_main())", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc, needle, timeout=240):
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} from serve-engine:\n" + "".join(lines))


def _port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_engine_serves_and_stops_cleanly(tmp_path, tiny_engine, sig):
    grpc, http, metrics = free_port(), free_port(), free_port()
    proc = _serve([str(tiny_engine), "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
                   "--log-file", str(tmp_path / "server.log")], tmp_path)
    try:
        lines = _wait_for(proc, "serve-engine: ready")
        assert "a repository written for this run" in "".join(lines)
        assert f"grpc 127.0.0.1:{grpc}" in lines[-1]
        res = LLMClient(f"127.0.0.1:{grpc}").generate("hello", 5, stream=True, reasoning_effort="low")
        assert res.num_output_tokens == 5
        # bound to loopback only
        assert "--grpc-address=127.0.0.1" in open(f"/proc/{_child_pid(proc.pid)}/cmdline").read().replace("\0", " ")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"serve-engine: stopped on {signal.Signals(sig).name} (tritonserver status 0)" in out
    assert glob.glob(f"/dev/shm/triton_python_backend_shm_region_gptoss_{proc.pid}_*") == []
    assert not _port_open(grpc) and not _port_open(http)


def _child_pid(pid: int) -> int:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert kids, "serve-engine has no tritonserver child"
    return int(kids[0])


def test_serve_engine_chat_demo_uses_the_engines_repository(tmp_path, tiny_engine):
    write_model_repo(tiny_engine)          # what build-engine leaves in ENGINE_DIR/triton
    proc = _serve([str(tiny_engine), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                   "--log-file", str(tmp_path / "server.log"), "--chat", "Hello, who are you?", "--max-tokens", "8"],
                  tmp_path)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"the engine's triton/ repository: {tiny_engine / 'triton'}" in out
    assert "> Hello, who are you?" in out and "[8 tokens, length" in out
    assert "serve-engine: stopped (tritonserver status 0)" in out
    assert glob.glob(f"/dev/shm/triton_python_backend_shm_region_gptoss_{proc.pid}_*") == []


def test_serve_engine_refuses_what_is_not_an_engine(tmp_path):
    proc = _serve([str(tmp_path)], tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "neither an engine directory" in out
