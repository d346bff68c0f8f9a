"""A client that goes away mid-stream cancels its Triton request: on an engine with ONE batch slot, the next
request is served at once instead of waiting for the abandoned generation; and 200 disconnects leave the memory of
the endpoint and of the Triton server flat."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.support.openai_server import metric

LONG = 1800          # tokens the abandoned request asks for: seconds of decoding on the tiny engine
SERVED = dict(max_batch_size=1, max_seq_len=2048)       # ONE batch slot (tests/deploy/conftest.py serves it)
CLIENT_TIMEOUT_S = 120


def _cancel_lines(served) -> int:
    return served.log.read_text(errors="replace").count("cancelled after")


def _settled_cancel_lines(served) -> int:
    """The count once Triton's log has stopped growing (its models log through the server, a little later)."""
    n, still = _cancel_lines(served), 0
    while still < 5:
        time.sleep(0.1)
        m = _cancel_lines(served)
        n, still = m, (still + 1 if m == n else 0)
    return n


def _short(client) -> float:
    t = time.perf_counter()
    r = client.completions.create(model="tiny", prompt="JULIET:", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4
    return time.perf_counter() - t


def test_one_slot_is_really_one_slot(client):
    """Negative control: while a client still reads a long answer, the next request waits for it."""
    s = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=120, temperature=0, stream=True,
                                  extra_body={"ignore_eos": True})
    chunks = iter(s)
    next(chunks)                 # admitted: it holds the only slot
    done = {}

    def read_rest():
        done["tokens"] = 1 + sum(1 for _ in chunks)
        done["t"] = time.perf_counter()

    th = threading.Thread(target=read_rest)
    th.start()
    _short(client)
    t_short = time.perf_counter()
    th.join(60)
    assert t_short >= done["t"] - 0.05, "the short request was served while the slot was busy"


def test_disconnect_frees_the_slot_at_once(served, client):
    alone = _short(client)
    before = _cancel_lines(served)
    s = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=LONG, temperature=0, stream=True,
                                  extra_body={"ignore_eos": True})
    for i, _ in enumerate(s):
        if i == 3:
            break
    s.close()
    waited = _short(client)
    # Served once the slot is free: Triton notices the cancellation at its next check (every 0.1 s)...
    assert waited < alone + 1.5, f"{waited:.2f} s for the next request ({alone:.2f} s alone)"
    # ...and says so.
    deadline = time.monotonic() + 5
    while _cancel_lines(served) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _cancel_lines(served) == before + 1


def test_a_non_streamed_request_is_cancelled_too_when_its_client_gives_up(served):
    impatient = served.openai_client(timeout_s=0.5)
    before = _cancel_lines(served)
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model="tiny", prompt="ROMEO:", max_tokens=LONG, temperature=0,
                                     extra_body={"ignore_eos": True})
    client = served.openai_client(timeout_s=60)
    assert _short(client) < 2.0       # the endpoint polls for a disconnect every 0.25 s
    assert _settled_cancel_lines(served) == before + 1


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").iterdir():
            kids = [int(k) for k in (task / "children").read_text().split()]
            out += kids
            todo += kids
    return out


def test_memory_is_flat_over_200_disconnects(served, client):
    def disconnect():
        s = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=400, temperature=0, stream=True,
                                      extra_body={"ignore_eos": True})
        next(iter(s))
        s.close()

    def rss():
        return _rss_kib(served.proc.pid), sum(_rss_kib(p) for p in _descendants(served.proc.pid) if
                                              os.path.exists(f"/proc/{p}"))

    def settled() -> str:
        """The metrics once no request is running (the last disconnect has been seen)."""
        deadline = time.monotonic() + 10
        while True:
            text = served.metrics_text()
            if metric(text, "gptoss_openai_requests_running") == 0 or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    for _ in range(20):          # warm up allocators, caches and connection pools
        disconnect()
    cancelled0 = metric(settled(), "gptoss_openai_cancelled_total", endpoint="/v1/completions")
    triton0 = _settled_cancel_lines(served)
    endpoint0, server0 = rss()
    for _ in range(200):
        disconnect()
    text = settled()
    assert _short(client) < 3.0
    endpoint1, server1 = rss()
    assert metric(text, "gptoss_openai_cancelled_total", endpoint="/v1/completions") - cancelled0 == 200
    assert metric(text, "gptoss_openai_requests_running") == 0
    seen = _settled_cancel_lines(served) - triton0
    assert seen == 200, f"only {seen} of 200 disconnected requests were cancelled in the model"
    print(f"cancelled in the model: {seen} of 200; RSS after 20 / 220 disconnects: endpoint {endpoint0 / 1024:.1f} -> {endpoint1 / 1024:.1f} MiB, "
          f"tritonserver + stubs {server0 / 1024:.1f} -> {server1 / 1024:.1f} MiB")
    assert endpoint1 - endpoint0 < 8 * 1024, (endpoint0, endpoint1)
    assert server1 - server0 < 16 * 1024, (server0, server1)
