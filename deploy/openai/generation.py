"""One generation as the endpoints see it: prompt ids -> Triton -> parsed deltas, with the finish reason, token
counts, stop strings and the endpoint's metrics."""

from __future__ import annotations

import time
from contextlib import aclosing
from dataclasses import dataclass, field

from deploy.openai.metrics import Metrics
from deploy.openai.output import Delta, HarmonyOutput, StopStrings, TextOutput
from deploy.openai.triton_stream import TritonStream


@dataclass
class Job:
    endpoint: str
    prompt_ids: list
    max_tokens: int
    parser: HarmonyOutput | TextOutput
    stops: StopStrings
    stream: bool
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_token_ids: tuple = ()
    end_id: int | None = None
    request_id: str = ""
    t0: float = field(default_factory=time.perf_counter)
    completion_tokens: int = 0
    finish_reason: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


async def run(job: Job, triton: TritonStream, metrics: Metrics):
    """Yields Deltas; when it returns, job.finish_reason and job.completion_tokens are set. Leaving early (the
    client went away) cancels the Triton request."""
    # A stop string can end the answer early only if the tokens come as they are made.
    stream = job.stream or bool(job.stops.stops)
    last = None
    metrics.running.inc()
    metrics.prompt_tokens.labels(job.endpoint).inc(job.prompt_tokens)
    try:
        gen = triton.generate(job.prompt_ids, job.max_tokens, stream=stream, temperature=job.temperature,
                              top_p=job.top_p, seed=job.seed, stop_token_ids=job.stop_token_ids, end_id=job.end_id,
                              request_id=job.request_id)
        async with aclosing(gen):
            async for tokens, why in gen:
                now = time.perf_counter()
                if tokens:
                    if last is None:
                        metrics.ttft.labels(job.endpoint).observe(now - job.t0)
                    else:
                        metrics.itl.labels(job.endpoint).observe(now - last)
                    last = now
                for t in tokens:
                    job.completion_tokens += 1
                    metrics.generation_tokens.labels(job.endpoint).inc()
                    d = job.parser.feed(t)
                    if d.content:
                        d.content = job.stops.feed(d.content)
                    if d:
                        yield d
                    if job.stops.hit:
                        job.finish_reason = "stop"
                        return
                if why is not None:
                    tail = job.parser.finish(truncated=why == "length")
                    tail.content = job.stops.feed(tail.content) + job.stops.flush()
                    if tail:
                        yield tail
                    job.finish_reason = "length" if why == "length" else \
                        ("tool_calls" if job.parser.called_tools else "stop")
                    return
    finally:
        metrics.running.dec()
        if job.finish_reason is not None:
            metrics.e2e.labels(job.endpoint).observe(time.perf_counter() - job.t0)


async def collect(job: Job, triton: TritonStream, metrics: Metrics) -> Delta:
    out = Delta()
    async for d in run(job, triton, metrics):
        out.extend(d)
    return out


def tool_calls_json(deltas) -> list[dict]:
    """ToolCallDeltas -> OpenAI tool_calls (whole calls)."""
    calls: dict[int, dict] = {}
    for d in deltas:
        c = calls.setdefault(d.index, {"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
        if d.id:
            c["id"] = d.id
        if d.name:
            c["function"]["name"] = d.name
        c["function"]["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


def delta_json(d: Delta) -> dict:
    """A Delta as the `delta` of a chat.completion.chunk."""
    out: dict = {}
    if d.reasoning:
        out["reasoning_content"] = d.reasoning
    if d.content:
        out["content"] = d.content
    if d.tool_calls:
        calls = []
        for t in d.tool_calls:
            c: dict = {"index": t.index, "function": {"arguments": t.arguments}}
            if t.id:
                c["id"], c["type"], c["function"]["name"] = t.id, "function", t.name
            calls.append(c)
        out["tool_calls"] = calls
    return out
