"""Prometheus metrics of the endpoint (its own registry, served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("gptoss_openai_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("gptoss_openai_errors", "Requests that failed, by endpoint and error type "
                              "(including errors reported inside a stream)", ["endpoint", "type"], registry=r)
        self.running = Gauge("gptoss_openai_requests_running", "Requests being generated now", registry=r)
        self.cancelled = Counter("gptoss_openai_cancelled", "Generations cancelled because the client went away",
                                 ["endpoint"], registry=r)
        self.ttft = Histogram("gptoss_openai_time_to_first_token_seconds", "Request arrival to first generated token",
                              ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("gptoss_openai_inter_token_latency_seconds", "Time between generated token responses",
                             ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("gptoss_openai_request_duration_seconds", "Request arrival to last token",
                             ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("gptoss_openai_prompt_tokens", "Prompt tokens processed", ["endpoint"],
                                     registry=r)
        self.generation_tokens = Counter("gptoss_openai_generation_tokens", "Tokens generated", ["endpoint"],
                                         registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
