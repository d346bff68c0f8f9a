"""serve-engine --openai-port as users run it (a subprocess on the tiny engine), for the OpenAI endpoint tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.server import free_port
from tests.support import REPO
from tests.support.serving import make_tiny_engine

ROOT = REPO


class ServedTiny:
    def __init__(self, tmp: Path, max_batch_size: int = 16, max_seq_len: int = 512, extra_args: tuple = (),
                 env: dict | None = None):
        """extra_args: more serve-engine flags (e.g. ("--max-restarts", "1")); env: more environment variables."""
        self.engine = make_tiny_engine(tmp / "engine", max_seq_len=max_seq_len, max_batch_size=max_batch_size)
        self.grpc, self.http, self.metrics, self.port = free_port(), free_port(), free_port(), free_port()
        self.log = tmp / "triton.log"
        self.out = tmp / "serve.out"
        cmd = [sys.executable, "-c", "import sys; from deploy.serve_cli import serve_main; sys.exit(serve_main())",
               str(self.engine), "--grpc-port", str(self.grpc), "--http-port", str(self.http),
               "--metrics-port", str(self.metrics), "--openai-port", str(self.port), "--log-file", str(self.log), *extra_args]
        self._out = open(self.out, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.grpc_url = f"127.0.0.1:{self.grpc}"

    def status(self, path: str = "/health") -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve-engine exited {self.proc.returncode}:\n{self.out.read_text()}")
            if self.status() == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"the OpenAI endpoint was not ready in {timeout} s:\n{self.out.read_text()}")

    def answer_while_loading(self) -> tuple[int, dict] | None:
        """(status, body) of a chat request sent as soon as the endpoint is up, before Triton has loaded the model
        (None if it was answered 200: the model was loaded first)."""
        deadline = time.monotonic() + 60
        while self.status() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        req = urllib.request.Request(f"{self.base_url}/chat/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                      "max_tokens": 2}).encode())
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        return None

    def openai_client(self, timeout_s: float):
        """The official openai client on this endpoint, without retries (a retry would hide a failed request)."""
        import openai
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=timeout_s)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    head = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(head + " "):
            return float(line.split()[-1])
    return 0.0
