"""The OpenAI endpoint's limits against serve-engine --openai-port on the tiny engine (a real tritonserver behind
it): a prompt over GPTOSS_OPENAI_MAX_PROMPT_TOKENS is a 400 naming the limit, and tokenizing a large prompt runs off
the event loop, so /health keeps answering meanwhile; the connection limits (serve-engine --openai-* flags) hold."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx

from deploy.server import free_port
from tests.support import REPO

PROMPT_LIMIT = 100
BODY_TIMEOUT_S, KEEP_ALIVE_S, MAX_HEADER_BYTES = 1.5, 1, 8192
SERVED = dict(max_batch_size=4, env={"GPTOSS_OPENAI_MAX_PROMPT_TOKENS": str(PROMPT_LIMIT)},
              extra_args=("--openai-body-timeout", str(BODY_TIMEOUT_S), "--openai-keep-alive-timeout", str(KEEP_ALIVE_S),
                          "--openai-max-header-bytes", str(MAX_HEADER_BYTES)))


def _complete(served, prompt, timeout=60.0, **kw):
    return httpx.post(f"{served.base_url}/completions", timeout=timeout,
                      json={"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0, **kw})


def _prompt_tokens(served, prompt) -> int:
    r = _complete(served, prompt, max_tokens=1)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def test_a_prompt_over_the_token_limit_is_a_400_naming_it(served):
    short = "ROMEO: " * 5
    assert _prompt_tokens(served, short) < PROMPT_LIMIT            # negative control: under the limit is served
    long = "ROMEO: " * 200
    r = _complete(served, long)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "prompt_too_long" and err["type"] == "invalid_request_error" and err["param"] == "prompt"
    assert "GPTOSS_OPENAI_MAX_PROMPT_TOKENS" in err["message"] and f"limit of {PROMPT_LIMIT} tokens" in err["message"]
    # token-id prompts and chat messages are held to the same limit
    r = _complete(served, [1] * (PROMPT_LIMIT + 1))
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
    r = httpx.post(f"{served.base_url}/chat/completions", timeout=60,
                   json={"model": "tiny", "messages": [{"role": "user", "content": long}], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
    assert r.json()["error"]["param"] == "messages"


def test_health_answers_while_a_2mb_prompt_is_tokenized(served):
    big = "ROMEO: wherefore art thou, good sir? " * (2 * 2**20 // 37)     # about 2 MB of text
    done = {}

    def send():
        t0 = time.monotonic()
        done["r"] = _complete(served, big, timeout=120)
        done["s"] = time.monotonic() - t0

    th = threading.Thread(target=send)
    worst = 0.0
    with httpx.Client(timeout=10) as h:
        th.start()
        time.sleep(0.05)
        while th.is_alive():
            t0 = time.monotonic()
            assert h.get(f"http://127.0.0.1:{served.port}/health").status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
    th.join()
    print(f"2 MB prompt answered in {done['s']:.2f} s; slowest /health meanwhile {worst * 1000:.0f} ms")
    assert done["r"].status_code == 400 and done["r"].json()["error"]["code"] == "prompt_too_long"
    assert done["s"] > 0.3, "the prompt was answered too fast for /health to have been asked while it was tokenized"
    assert worst < 2.0


def _raw(served, data: bytes):
    s = socket.create_connection(("127.0.0.1", served.port), timeout=15)
    s.sendall(data)
    return s


def _until_closed(s) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t0, got = time.monotonic(), b""
    while chunk := s.recv(65536):
        got += chunk
    return got, time.monotonic() - t0


def test_a_client_that_never_sends_its_body_is_answered_408_and_disconnected(served):
    s = _raw(served, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\":")
    got, took = _until_closed(s)
    print(f"stalled body: closed after {took:.2f} s (--openai-body-timeout {BODY_TIMEOUT_S})")
    assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got and b"--openai-body-timeout" in got
    assert BODY_TIMEOUT_S - 0.2 < took < BODY_TIMEOUT_S + 3
    # negative control: a whole body on the same kind of connection is served, not timed out
    body = json.dumps({"model": "tiny", "prompt": "ROMEO:", "max_tokens": 1}).encode()
    s = _raw(served, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert _until_closed(s)[0].startswith(b"HTTP/1.1 200")


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(served):
    s = _raw(served, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    got, took = _until_closed(s)
    print(f"idle keep-alive: closed {took:.2f} s after the request (--openai-keep-alive-timeout {KEEP_ALIVE_S})")
    assert got.startswith(b"HTTP/1.1 200")
    assert KEEP_ALIVE_S - 0.2 < took < KEEP_ALIVE_S + 3


def test_a_request_head_that_grows_past_the_bound_is_refused(served):
    # h11 bounds the head it is still waiting for (a client trickling headers forever), not one that is complete
    s = _raw(served, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES))
    got, took = _until_closed(s)
    assert got.startswith(b"HTTP/1.1 400") and took < 3
    s = _raw(served, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES // 2)
             + b"\r\n\r\n")
    assert _until_closed(s)[0].startswith(b"HTTP/1.1 200")      # negative control: under the bound


def test_the_limits_are_in_help():
    out = subprocess.run([sys.executable, "-c", "import sys; from deploy.serve_cli import serve_main; "
                          "sys.exit(serve_main(['--help']))"], capture_output=True, text=True, cwd=REPO).stdout
    for flag in ("--openai-keep-alive-timeout", "--openai-body-timeout", "--openai-limit-concurrency",
                 "--openai-max-header-bytes"):
        assert flag in out


class Forwarder:
    """A TCP forwarder to Triton's gRPC port that the test can cut (Triton unreachable) and restore."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.conns: list[socket.socket] = []
        self.listener = None
        self.open()

    def open(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                a, _ = listener.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)     # wakes the blocked accept(); close() alone would not
        except OSError:
            pass
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []


def test_503_when_triton_is_unreachable_and_the_connection_stays_usable(served):
    """An endpoint (the same app, in-process) whose Triton goes away answers 503 backend_unavailable in OpenAI's
    shape, streamed or not, /health turns 503, and one keep-alive client gets an error then a good answer."""
    import uvicorn
    from deploy.openai.app import ServedModel, create_app
    from deploy.openai.triton_stream import TritonStream
    from model_repo.tokenizer import load_tokenizer
    fwd = Forwarder(served.grpc)
    port = free_port()
    app = create_app(ServedModel("tiny", load_tokenizer(served.engine, "auto"), 512), TritonStream(f"127.0.0.1:{fwd.port}"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http="h11"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        base = f"http://127.0.0.1:{port}"
        body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 2, "temperature": 0}
        with httpx.Client(base_url=base, timeout=30, limits=httpx.Limits(max_connections=1)) as h:
            deadline = time.monotonic() + 30
            while h.get("/health").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert h.post("/v1/completions", json=body).status_code == 200          # negative control: reachable
            fwd.cut()
            for stream in (False, True, False):
                r = h.post("/v1/completions", json={**body, "stream": stream})
                assert r.status_code == 503, r.text
                err = r.json()["error"]
                assert err["type"] == "service_unavailable" and err["code"] == "backend_unavailable"
                assert f"127.0.0.1:{fwd.port}" in err["message"]
            assert h.get("/health").status_code == 503
            fwd.open()
            deadline = time.monotonic() + 30
            while h.get("/health").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert h.post("/v1/completions", json=body).status_code == 200
    finally:
        fwd.cut()
        server.should_exit = True
        th.join(10)


def test_an_error_then_a_good_request_on_one_keep_alive_connection(served):
    body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 2, "temperature": 0}
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=30) as h:
        peers = []
        for req, want in ((dict(body, max_tokens=0), 400), (dict(body, model="gpt-4o"), 404),
                          (dict(body, prompt="ROMEO: " * 200), 400), (body, 200), (dict(body, stream=True), 200)):
            r = h.post("/v1/completions", json=req)
            assert r.status_code == want, r.text
            peers.append(r.extensions["network_stream"].get_extra_info("client_addr"))
        r = h.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        peers.append(r.extensions["network_stream"].get_extra_info("client_addr"))
        assert h.post("/v1/completions", json=body).status_code == 200
        assert len(set(peers)) == 1, f"the connection was replaced after an error: {peers}"
