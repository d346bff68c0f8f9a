"""Whole-batch generation: every prompt prefilled together, then decoded until each one stops.

This runs the in-flight scheduler (runtime.scheduler) synchronously with room for every prompt, so `generate`
and the served model share one prefill, sampling and stopping path: prompts are right-padded into one [B, T]
prefill (padding has position -1: never cached, never attended to, skipped by the MLP), every sequence then
decodes at its own position, and a finished sequence leaves the batch (the rest keep decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from runtime.model import ReferenceModel
from runtime.sampling import SamplingParams
from runtime.scheduler import Request, Scheduler


@dataclass
class TokenEvent:
    """One generated token of one sequence (what a streaming server sends)."""
    index: int                       # which prompt of the batch
    token_id: int
    logprob: float | None            # when requested
    finish_reason: str | None        # None while running; "stop" (a stop token, included) or "length"


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)   # generated ids, prompt excluded, stop token included
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    logits: torch.Tensor | None = None                     # float32 [len(output_ids), vocab]
    prompt_logits: torch.Tensor | None = None              # float32 [len(prompt_ids), vocab]


def _params_list(params, n) -> list[SamplingParams]:
    if params is None:
        params = SamplingParams()
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
    return params


def generate_stream(model: ReferenceModel, prompts: Sequence[Sequence[int]],
                    params: SamplingParams | Sequence[SamplingParams] | None = None,
                    results: list[GenerationResult] | None = None) -> Iterator[TokenEvent]:
    """Yields TokenEvents step by step. If `results` is a list, GenerationResults are appended to it and
    filled as the loop runs (prompt logits, logits, logprobs)."""
    prompts = [list(map(int, p)) for p in prompts]
    B = len(prompts)
    if B == 0:
        return
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if min(p) < 0 or max(p) >= model.network.vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {model.network.vocab_size})")
    plist = _params_list(params, B)
    events: list[TokenEvent] = []
    res = [GenerationResult(prompt_ids=p) for p in prompts]
    if results is not None:
        results.extend(res)
    limit = model.network.max_position_embeddings
    for i, (p, q) in enumerate(zip(prompts, plist)):
        if len(p) + q.max_tokens > limit:
            raise ValueError(f"prompt {i} is {len(p)} tokens and asks for {q.max_tokens} more, past the model's "
                             f"max_position_embeddings {limit}; fix: ask for at most {max(limit - len(p), 0)} tokens")
    sched = Scheduler(model, max_batch_size=B, capacity=max(len(p) + q.max_tokens for p, q in zip(prompts, plist)))
    for i, (p, q) in enumerate(zip(prompts, plist)):
        req = Request(str(i), p, q)
        res[i].output_ids = req.output_ids          # filled as it runs
        if q.logprobs:
            res[i].logprobs = req.log_probs
        req.emit = _collector(events, i, req, res[i])
        sched.submit(req)
    more = True
    while more:
        more = sched.step()
        batch, events[:] = list(events), []
        failed = [e for e in batch if isinstance(e, _Failure)]
        if failed:
            raise RuntimeError(f"prompt {failed[0].index}: {failed[0].message}")
        yield from batch


@dataclass
class _Failure:
    index: int
    message: str


def _collector(events: list, index: int, req: Request, result: GenerationResult):
    """The emit callback of prompt `index`: TokenEvents out, its GenerationResult completed when it finishes."""
    def emit(tokens, reason, message):
        if reason == "error":
            events.append(_Failure(index, message))
            return
        n = len(tokens)
        for k, tok in enumerate(tokens):
            lp = req.log_probs[len(req.log_probs) - n + k] if req.params.logprobs else None
            events.append(TokenEvent(index, tok, lp, reason if k == n - 1 else None))
        if reason is not None:
            result.finish_reason = reason
            if req.params.return_logits:
                result.logits = torch.stack(req.logits) if req.logits else None
            if req.params.prompt_logits:
                result.prompt_logits = req.context_logits
    return emit


def generate(model: ReferenceModel, prompts: Sequence[Sequence[int]],
             params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[GenerationResult]:
    results: list[GenerationResult] = []
    for _ in generate_stream(model, prompts, params, results):
        pass
    return results
