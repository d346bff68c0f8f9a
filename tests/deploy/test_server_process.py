"""serve-engine owns its ports and its server: a port already answering is refused naming the process, and a
tritonserver never outlives the process that started it, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from deploy.server import ServerError, TritonServer

pytestmark = pytest.mark.reliability


def test_a_port_already_answering_is_refused_naming_the_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        srv = TritonServer(tmp_path, http_port=port)
        with pytest.raises(ServerError, match=f"port {port} \\(--http-port\\) on 127.0.0.1 is already answering: "
                                              f"process {os.getpid()} "):
            srv.start(timeout_s=30)
        assert srv.proc is None                      # nothing was started


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_parent_takes_its_tritonserver_with_it(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()                                       # an empty repository: the server is ready with no models
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from deploy.server import TritonServer
        srv = TritonServer({str(repo)!r}, exit_timeout_s=2)
        srv.start(timeout_s=120)
        print(srv.proc.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid = int(child.stdout.readline())
        assert _alive(server_pid)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 20
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), "tritonserver outlived the process that started it"
    finally:
        child.kill()
        if server_pid and _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_an_engine_under_a_path_with_spaces_and_non_ascii_serves(tmp_path):
    from deploy.client import LLMClient
    from model_repo.write import write_model_repo
    from tests.support.serving import make_tiny_engine
    engine = make_tiny_engine(tmp_path / "my engines é" / "tiny ünïcode", max_seq_len=256, max_batch_size=2)
    repo = write_model_repo(engine)
    with TritonServer(repo, log_file=tmp_path / "server.log", exit_timeout_s=3) as srv:
        srv.wait_ready(120)
        res = LLMClient(srv.grpc_url).generate("hello", 4, raw=True)
    assert res.num_output_tokens == 4 and res.text


def test_a_model_that_fails_to_load_is_reported_at_once_with_its_error(tmp_path):
    from model_repo.write import write_model_repo
    from tests.support.serving import make_tiny_engine
    engine = make_tiny_engine(tmp_path / "engine", max_seq_len=256, max_batch_size=2)
    repo = write_model_repo(engine)
    (engine / "tokenizer.json").write_text("{ not json")
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=r"before becoming ready: model \w+: "):
        TritonServer(repo, log_file=tmp_path / "server.log", exit_timeout_s=3).start(timeout_s=120)
    assert time.monotonic() - t0 < 60
