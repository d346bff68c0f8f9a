"""model_repo.responses.ResponseWriter: the served model's responses leave from one thread, tokens made while a
send is slow travel together, and clients that go away get their generation cancelled."""

from __future__ import annotations

import threading
import time

from model_repo.responses import ResponseWriter


class Responder:
    def __init__(self, rid, streaming=True, send_s=0.0, fail=False):
        self.rid, self.streaming, self.send_s, self.fail = rid, streaming, send_s, fail
        self.sent, self.gone, self.elapsed = [], False, 0.0
        self.done = threading.Event()
        self.threads = set()

    def send(self, tokens, reason, message):
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("stream closed")
        time.sleep(self.send_s)
        self.sent.append((list(tokens), reason))
        if reason is not None:
            self.done.set()

    def is_cancelled(self):
        return self.gone


def _stream(send_s: float, min_interval_s: float = 0.0, every_s: float = 0.005) -> Responder:
    """20 tokens, one every `every_s`, then a finishing one, through a writer whose sends take send_s."""
    cancelled = []
    w = ResponseWriter(cancelled.append, min_interval_s=min_interval_s)
    try:
        r = Responder("r", send_s=send_s)
        emit = w.add(r)
        start = time.perf_counter()
        for t in range(20):                  # the producer never waits for the sends
            t0 = time.perf_counter()
            emit([t], None, None)
            assert time.perf_counter() - t0 < 0.02
            time.sleep(every_s)
        emit([20], "length", None)
        r.elapsed = time.perf_counter() - start
        assert r.done.wait(10)
    finally:
        w.stop()
    assert [t for toks, _ in r.sent for t in toks] == list(range(21))
    assert r.sent[-1][1] == "length" and all(reason is None for _, reason in r.sent[:-1])
    assert r.threads == {"response-writer"} and cancelled == [] and w.live == 0
    return r


def test_tokens_arrive_in_order_and_coalesce_while_a_send_is_slow():
    slow = _stream(send_s=0.05)
    assert len(slow.sent) <= slow.elapsed / 0.05 + 2 and len(slow.sent) < 21     # fewer, fuller responses
    assert len(_stream(send_s=0.0).sent) > 10           # negative control: one per token, or nearly


def test_unstreamed_requests_get_one_response():
    w = ResponseWriter(lambda rid: None)
    try:
        r = Responder("whole", streaming=False)
        emit = w.add(r)
        for t in range(5):
            emit([t], None, None)
        emit([5], "stop", None)
        assert r.done.wait(10)
    finally:
        w.stop()
    assert r.sent == [([0, 1, 2, 3, 4, 5], "stop")]


def test_gone_clients_are_cancelled():
    cancelled = []
    w = ResponseWriter(cancelled.append, cancel_check_s=0.02)
    try:
        quiet, broken = Responder("quiet"), Responder("broken", fail=True)
        w.add(quiet)
        emit_broken = w.add(broken)
        emit_broken([1], None, None)          # its send fails: the client has gone
        quiet.gone = True                      # noticed by the periodic check
        deadline = time.monotonic() + 10
        while not {"quiet", "broken"} <= set(cancelled) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
    assert {"quiet", "broken"} <= set(cancelled)


def test_many_live_streams_get_fewer_fuller_responses():
    """17 live streams, 8 per response: after the first response, each carries 1 + 16 // 8 = 3 tokens."""
    w = ResponseWriter(lambda rid: None, streams_per_response=8, min_interval_s=0.0)
    try:
        watched = Responder("watched")
        emit = w.add(watched)
        others = [w.add(Responder(f"o{i}")) for i in range(16)]
        for t in range(10):
            emit([t], None, None)
            time.sleep(0.01)
        emit([10], "length", None)
        assert watched.done.wait(10)
        sizes = [len(toks) for toks, _ in watched.sent]
        # [1, 3, 3, 3, 1] when the writer keeps up; a writer slowed by a busy machine only joins more
        assert sizes[0] == 1 and all(n >= 3 for n in sizes[1:-1]) and len(sizes) <= 5, sizes
        assert [t for toks, _ in watched.sent for t in toks] == list(range(11))
        for e in others:
            e([], "cancelled", None)
    finally:
        w.stop()
    # Negative control: one stream alone gets a response per token.
    assert len(_stream(send_s=0.0).sent) > 10


def test_fast_tokens_share_responses_at_most_every_min_interval():
    r = _stream(send_s=0.0, min_interval_s=0.05, every_s=0.01)        # ~200 ms of tokens, a response per 50 ms
    assert r.sent[0] == ([0], None)                                     # the first token never waits
    assert 3 <= len(r.sent) <= r.elapsed / 0.05 + 2 and len(r.sent) < 15


def _responses_while_live(live: int, min_interval_s: float, tokens: int = 40, every_s: float = 0.005):
    """-> (the response sizes of one stream of `tokens` tokens, one every every_s, while `live` streams are running;
    the seconds its tokens took)."""
    w = ResponseWriter(lambda rid: None, streams_per_response=8, min_interval_s=min_interval_s, max_interval_s=1.0)
    try:
        watched = Responder("watched")
        emit = w.add(watched)
        others = [w.add(Responder(f"o{i}")) for i in range(live - 1)]
        start = time.perf_counter()
        for t in range(tokens):
            emit([t], None, None)
            time.sleep(every_s)
        emit([tokens], "length", None)
        elapsed = time.perf_counter() - start
        assert watched.done.wait(10)
        for e in others:
            e([], "cancelled", None)
    finally:
        w.stop()
    assert [t for toks, _ in watched.sent for t in toks] == list(range(tokens + 1))
    return [len(toks) for toks, _ in watched.sent], elapsed


def test_the_interval_grows_with_the_streams_live():
    """16 live streams, 8 per response, 20 ms: a stream's responses leave at most every 40 ms; with 4 live streams
    every 20 ms, so about twice as many (~200 ms of tokens: ~6 against ~11)."""
    many, t_many = _responses_while_live(16, 0.02)
    few, t_few = _responses_while_live(4, 0.02)
    assert many[0] == 1 and few[0] == 1                     # the first token never waits
    assert len(many) <= t_many / 0.04 + 3, (many, t_many)
    assert len(few) <= t_few / 0.02 + 3, (few, t_few)
    # Negative control: with 4 live the stream does get the shorter interval (not 40 ms too).
    assert len(few) / t_few >= 1.4 * len(many) / t_many, (few, t_few, many, t_many)
