"""One writer thread that sends the `tensorrt_llm` model's responses, so generation never waits on Triton.

The scheduler hands each request's tokens to `emit` (a list append under a lock, then a wake-up) and goes on with
the next decode step; the writer sends them. Tokens that arrive while an earlier response of the same request is
being sent travel together in the next response, so a writer that falls behind under load sends fewer, fuller
responses instead of queueing one per token. And every response costs the same CPU in each hop after this one
(Triton's core, the BLS model, the client) whatever it carries, so with many streams live a streamed response waits
for several tokens: while at most `streams_per_response` streams are live each token leaves on its own (after the
first response, which always leaves at once), beyond that a response carries ceil(live / streams_per_response)
tokens, which keeps the responses per decode step near `streams_per_response` at any concurrency (the same idea
as vLLM's and TensorRT-LLM's `stream_interval`, made adaptive). Likewise a stream's responses leave at most every
`min_interval_s` (20 ms: about a screen refresh) while at most `streams_per_response` streams are live, and at most
every min_interval_s x live / streams_per_response beyond that (capped at `max_interval_s`, 100 ms), which bounds
the responses per second of all streams together near streams_per_response / min_interval_s (400) whatever the
model's speed; the first response and the last one never wait. Why time and not only tokens: every response costs
about 1 ms of CPU summed over the hops (measured on the tiny engine on ONNX Runtime, 2 cores: tritonserver, the
BLS model, the gRPC client), more than a decode step of a small model, so on a small CPU box per-token responses
take the decode loop's CPU; benchmarks/bench_serving.py's rows in README.md show the effect. The writer also asks Triton, a few times a second, whether each
running request's client has cancelled or gone, and cancels its generation then (the scheduler itself never
makes that round trip).

A responder is anything with `rid`, `streaming`, `send(tokens, finish_reason, message)` and `is_cancelled()`;
the Triton glue's wraps a response sender. Pure Python: the tests drive it without a server.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

CANCEL_CHECK_S = 0.2
STREAMS_PER_RESPONSE = 8
MIN_INTERVAL_S = 0.02
MAX_INTERVAL_S = 0.1


class _Stream:
    __slots__ = ("responder", "tokens", "reason", "message", "started", "last_sent")

    def __init__(self, responder):
        self.responder = responder
        self.tokens: list = []
        self.reason = None
        self.message = None
        self.started = False        # its first response is on its way
        self.last_sent = 0.0        # time.monotonic() when its latest response was taken for sending


class ResponseWriter:
    def __init__(self, cancel: Callable[[str], None], log: Callable[[str], None] | None = None,
                 cancel_check_s: float = CANCEL_CHECK_S, streams_per_response: int = STREAMS_PER_RESPONSE,
                 min_interval_s: float = MIN_INTERVAL_S, max_interval_s: float = MAX_INTERVAL_S):
        """cancel(request_id): stop a generation whose client has gone."""
        self._cancel = cancel
        self._fan = max(1, int(streams_per_response))
        self._min_interval = max(0.0, float(min_interval_s))
        self._max_interval = max(self._min_interval, float(max_interval_s))
        self._held: dict[_Stream, float] = {}      # streams with tokens waiting for min_interval: -> due time
        self._log = log or (lambda msg: None)
        self._cancel_check_s = cancel_check_s
        self._cv = threading.Condition()
        self._ready: dict[_Stream, None] = {}      # streams with something to send, in arrival order
        self._live: dict[int, _Stream] = {}        # every stream not finished yet
        self._stopping = False
        self.responses = 0                          # responses sent (the benchmarks report tokens per response)
        self._thread = threading.Thread(target=self._run, name="response-writer", daemon=True)
        self._thread.start()

    def add(self, responder) -> Callable[[list, "str | None", "str | None"], None]:
        """Register one request's responder; -> the emit callback to give its generator."""
        stream = _Stream(responder)
        with self._cv:
            self._live[id(stream)] = stream

        def emit(tokens, reason, message):
            with self._cv:
                stream.tokens.extend(tokens)
                if reason is not None:
                    stream.reason, stream.message = reason, message
                if reason is not None or (responder.streaming and stream.tokens and not stream.started):
                    ready = True
                elif responder.streaming and len(stream.tokens) >= 1 + (len(self._live) - 1) // self._fan:
                    due = stream.last_sent + self._interval(len(self._live))
                    ready = due <= time.monotonic()
                    if not ready and stream not in self._held:
                        self._held[stream] = due
                        self._cv.notify()
                else:
                    ready = False
                if ready:
                    stream.started = True
                    self._held.pop(stream, None)
                    self._ready[stream] = None
                    self._cv.notify()
        return emit

    def _interval(self, live: int) -> float:
        """The least time between two responses of one stream while `live` streams are running."""
        return min(self._max_interval, self._min_interval * max(1.0, live / self._fan))

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is ready, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    @property
    def live(self) -> int:
        with self._cv:
            return len(self._live)

    def _run(self) -> None:
        next_check = time.monotonic() + self._cancel_check_s
        while True:
            with self._cv:
                while not self._ready and not self._stopping:
                    now = time.monotonic()
                    due = [s for s, t in self._held.items() if t <= now]
                    for stream in due:
                        del self._held[stream]
                        self._ready[stream] = None
                    if due:
                        break
                    wait = min([next_check] + list(self._held.values())) - now
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                if self._stopping and not self._ready:
                    return
                now = time.monotonic()
                work = []
                for stream in self._ready:
                    work.append((stream, stream.tokens, stream.reason, stream.message))
                    stream.tokens = []
                    stream.last_sent = now
                    if stream.reason is not None:
                        self._live.pop(id(stream), None)
                self._ready.clear()
            for stream, tokens, reason, message in work:
                try:
                    stream.responder.send(tokens, reason, message)
                    self.responses += 1
                except Exception as e:  # noqa: BLE001 - the client has gone: stop its generation
                    self._log(f"request {stream.responder.rid}: sending a response failed ({e}); cancelling it")
                    if reason is None:
                        self._cancel(stream.responder.rid)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self._cancel_check_s
                self._check_cancelled()

    def _check_cancelled(self) -> None:
        with self._cv:
            streams = list(self._live.values())
        for stream in streams:
            try:
                gone = stream.responder.is_cancelled()
            except Exception:  # noqa: BLE001 - a sender that cannot answer has lost its client
                gone = True
            if gone:
                self._cancel(stream.responder.rid)
