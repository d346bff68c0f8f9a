"""The OpenAI endpoint's connection guards (deploy/openai/protocol.py) against serve-engine --openai-port on the tiny
engine, with raw sockets and the official openai client: a connection that sends nothing, or trickles its request
head, is closed at --openai-header-timeout (408 in OpenAI's error shape when it sent something), and a request past
--openai-limit-concurrency is a 503 in OpenAI's error shape, not uvicorn's plain text. uvicorn alone holds both
kinds of connection forever (it arms no timer before the first response, and each byte cancels its keep-alive one)."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytestmark = pytest.mark.reliability

HEAD_TIMEOUT_S, LIMIT = 2.0, 4
SERVED = dict(max_batch_size=2, extra_args=("--openai-header-timeout", str(HEAD_TIMEOUT_S),
                                            "--openai-limit-concurrency", str(LIMIT)))
HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def _connect(served) -> socket.socket:
    return socket.create_connection(("127.0.0.1", served.port), timeout=HEAD_TIMEOUT_S * 5)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(served):
    s = _connect(served)
    try:
        s.settimeout(HEAD_TIMEOUT_S / 2)
        with pytest.raises(socket.timeout):          # negative control: still open before the deadline
            s.recv(1)
        s.settimeout(HEAD_TIMEOUT_S * 5)
        t0 = time.monotonic()
        assert s.recv(1) == b""                      # closed by the server, with nothing sent
        assert time.monotonic() - t0 < HEAD_TIMEOUT_S * 4
    finally:
        s.close()


def test_a_trickled_request_head_gets_a_408_in_openai_shape(served):
    s = _connect(served)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        deadline = time.monotonic() + HEAD_TIMEOUT_S * 4
        try:
            while time.monotonic() < deadline:      # one header byte every 0.2 s: never a complete head
                s.sendall(b"X")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = _status_and_body(_read_all(s))
    finally:
        s.close()
    assert status == 408
    err = json.loads(body)["error"]
    assert "--openai-header-timeout" in err["message"] and err["type"] == "invalid_request_error"


def test_a_head_sent_in_pieces_within_the_deadline_is_answered(served):
    """Negative control: slow but in time is served, on a keep-alive connection that then gets the same deadline."""
    s = _connect(served)
    try:
        s.sendall(HEAD[:10])
        time.sleep(HEAD_TIMEOUT_S / 4)
        s.sendall(HEAD[10:])
        first = s.recv(65536)
        assert _status_and_body(first)[0] == 200
        s.sendall(b"GET /health HTTP/1.1\r\n")        # the next request's head, never finished
        status, _ = _status_and_body(_read_all(s))
        assert status == 408
    finally:
        s.close()


def test_past_the_connection_limit_is_a_503_in_openai_shape(served):
    import openai
    held = [_connect(served) for _ in range(LIMIT - 1)]        # with the client's own: LIMIT connections open
    try:
        time.sleep(0.2)
        with pytest.raises(openai.APIStatusError) as e:
            served.openai_client(30).completions.create(model="tiny", prompt="hi", max_tokens=1)
        assert e.value.status_code == 503
        assert e.value.body["type"] == "service_unavailable" and e.value.body["code"] == "overloaded"
        assert "--openai-limit-concurrency" in e.value.body["message"]
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    # Negative control: under the limit the same request is served.
    r = served.openai_client(60).completions.create(model="tiny", prompt="hi", max_tokens=1)
    assert r.choices[0].finish_reason in ("stop", "length")
