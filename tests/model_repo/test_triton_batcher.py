"""In-flight batching of the served model (runtime.scheduler, no server): admitted mid-flight, equal to running
alone, stop words, cancellation, seeded sampling, failures kept to their request."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.sampling import SamplingParams
from runtime.scheduler import Request, Scheduler


def request(rid, prompt, max_tokens, stop_ids=(), stop_sequences=(), emit=None, **kw):
    """A request as the served model makes it: no default stop tokens unless given."""
    return Request(rid, list(prompt), SamplingParams(max_tokens=max_tokens, stop_token_ids=tuple(stop_ids),
                                                     stop_sequences=tuple(stop_sequences), **kw), emit=emit)


def batcher(rt, max_batch_size):
    return Scheduler(rt.model, max_batch_size=max_batch_size)


class Collector:
    def __init__(self, n):
        self.tokens = {i: [] for i in range(n)}
        self.reasons = {}
        self.done = threading.Event()
        self.n = n

    def emit_for(self, i):
        def emit(tokens, reason, message):
            self.tokens[i].extend(tokens)
            if reason is not None:
                self.reasons[i] = reason
                if len(self.reasons) == self.n:
                    self.done.set()
        return emit


def _alone(rt, prompt, n, **kw):
    from runtime import SamplingParams
    return rt.generate([prompt], SamplingParams(max_tokens=n, stop_token_ids=(), **kw))[0].output_ids


@pytest.mark.parametrize("rows", [8, 3], ids=["8-rows", "3-rows-queueing"])
def test_concurrent_requests_join_the_running_batch_and_match_alone(rt, rows):
    prompts = [[(7 * i + j) % 1000 + 1 for j in range(3 + i)] for i in range(12)]
    lengths = [6 + (i % 4) for i in range(12)]
    b = batcher(rt, max_batch_size=rows)
    b.start()
    try:
        col = Collector(len(prompts))
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            b.submit(request(f"r{i}", p, n, emit=col.emit_for(i)))
            if i % 3 == 2:
                time.sleep(0.02)        # later requests arrive while earlier ones decode
        assert col.done.wait(120)
    finally:
        b.stop()
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        assert col.tokens[i] == _alone(rt, p, n), f"request {i} differs from running alone"
        assert col.reasons[i] == "length"
    assert b.max_active > 1                        # they really shared steps
    assert b.steps < sum(lengths)                  # fewer steps than running them one after another


def test_stop_tokens_cancel_and_slot_reuse(rt):
    prompt = [5, 6, 7, 8]
    ref = _alone(rt, prompt, 8)
    b = batcher(rt, max_batch_size=1).start()
    try:
        col = Collector(3)
        # stops at the 3rd generated token (as a single-token and as a 2-token stop sequence)
        b.submit(request("a", prompt, 8, stop_ids={ref[2]}, emit=col.emit_for(0)))
        b.submit(request("b", prompt, 8, stop_sequences=[ref[1:3]], emit=col.emit_for(1)))
        b.submit(request("c", prompt, 500, emit=col.emit_for(2)))
        deadline = time.monotonic() + 60
        while len(col.tokens[2]) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        b.cancel("c")
        assert col.done.wait(60)
        # the freed slot serves the next request with a clean cache
        again = Collector(1)
        b.submit(request("d", prompt, 8, emit=again.emit_for(0)))
        assert again.done.wait(60)
    finally:
        b.stop()
    first_stop = ref.index(ref[2])       # greedy may repeat a token: the first occurrence stops
    assert col.tokens[0] == ref[:first_stop + 1] and col.reasons[0] == "stop"
    assert col.tokens[1] == ref[:3] and col.reasons[1] == "stop"
    assert col.reasons[2] == "cancelled" and len(col.tokens[2]) < 500
    assert again.tokens[0] == ref


def test_seeded_sampling_does_not_depend_on_the_batch(rt):
    prompt = [11, 12, 13]
    kw = dict(temperature=0.9, top_k=40, top_p=0.95, seed=1234)
    b = batcher(rt, max_batch_size=4).start()
    try:
        col = Collector(3)
        b.submit(request("s", prompt, 10, emit=col.emit_for(0), **kw))
        b.submit(request("x", [1, 2], 10, emit=col.emit_for(1), temperature=1.0, seed=7))
        b.submit(request("y", [3, 4, 5, 6], 10, emit=col.emit_for(2)))
        assert col.done.wait(60)
    finally:
        b.stop()
    assert col.tokens[0] == _alone(rt, prompt, 10, **kw)


def test_a_failing_step_fails_its_requests_not_the_loop(rt):
    b = batcher(rt, max_batch_size=2).start()
    try:
        running = Collector(1)
        b.submit(request("long", [5, 6], 60, emit=running.emit_for(0)))
        col = Collector(1)
        b.submit(request("bad", [5, 10**6], 4, emit=col.emit_for(0)))   # id outside the vocabulary
        assert col.done.wait(60)
        assert col.reasons[0] == "error"
        assert running.done.wait(120) and running.reasons[0] == "length"     # unharmed by its neighbour
        ok = Collector(1)
        b.submit(request("ok", [5, 6], 3, emit=ok.emit_for(0)))
        assert ok.done.wait(60) and ok.tokens[0] == _alone(rt, [5, 6], 3)
    finally:
        b.stop()
