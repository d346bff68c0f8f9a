"""The batching generate loop: one prefill for a batch of unequal-length prompts, then incremental decode.

Prompts are right-padded into one [B, T] prefill (padding has position -1: never cached, never attended to,
and skipped by the MLP); every sequence then decodes at its own position. A finished sequence (stop token or
max_tokens) gets position -1 from then on, so it writes nothing more to its cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from runtime.model import ReferenceModel
from runtime.sampling import SamplingParams, make_generator, sample


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
    eos = tuple(model.network.eos_token_ids)
    stops = [set(eos if p.stop_token_ids is None else p.stop_token_ids) for p in plist]
    gens = [make_generator(p, model.device) for p in plist]
    res = [GenerationResult(prompt_ids=p, logprobs=[] if q.logprobs else None) for p, q in zip(prompts, plist)]
    if results is not None:
        results.extend(res)

    lens = torch.tensor([len(p) for p in prompts])
    T = int(lens.max())
    max_new = max(p.max_tokens for p in plist)
    limit = model.network.max_position_embeddings
    for i, (p, q) in enumerate(zip(prompts, plist)):
        if len(p) + q.max_tokens > limit:
            raise ValueError(f"prompt {i} is {len(p)} tokens and asks for {q.max_tokens} more, past the model's "
                             f"max_position_embeddings {limit}; fix: ask for at most {max(limit - len(p), 0)} tokens")
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.full((B, T), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
        pos[i, :len(p)] = torch.arange(len(p))
    cache = model.new_cache(B, capacity=T + max_new)
    want_prompt_logits = any(p.prompt_logits for p in plist)
    logits = model.forward(ids, pos, cache, logits="all" if want_prompt_logits else "last")
    if want_prompt_logits:
        for i, p in enumerate(plist):
            if p.prompt_logits:
                res[i].prompt_logits = logits[i, :len(prompts[i])].clone()
        logits = logits[torch.arange(B), lens - 1]
    step_logits: list[list[torch.Tensor]] = [[] for _ in range(B)]
    running = [p.max_tokens > 0 for p in plist]
    for i, p in enumerate(plist):
        if p.max_tokens == 0:
            res[i].finish_reason = "length"
    next_pos = lens.clone().to(model.device)
    while any(running):
        tokens = sample(logits, plist, gens)
        logprobs = torch.log_softmax(logits, dim=-1) if any(p.logprobs for p in plist) else None
        token_list = tokens.tolist()
        for i in range(B):
            if not running[i]:
                continue
            tok = token_list[i]
            r = res[i]
            r.output_ids.append(tok)
            lp = float(logprobs[i, tok]) if plist[i].logprobs else None
            if lp is not None:
                r.logprobs.append(lp)
            if plist[i].return_logits:
                step_logits[i].append(logits[i].clone())
            if tok in stops[i]:
                r.finish_reason = "stop"
            elif len(r.output_ids) >= plist[i].max_tokens:
                r.finish_reason = "length"
            if r.finish_reason is not None:
                running[i] = False
                if plist[i].return_logits:
                    r.logits = torch.stack(step_logits[i])
            yield TokenEvent(i, tok, lp, r.finish_reason)
        if not any(running):
            break
        # finished sequences get position -1: they write nothing more to the cache
        step_pos = next_pos if all(running) else torch.where(torch.tensor(running, device=next_pos.device), next_pos, -1)
        logits = model.forward(tokens.view(B, 1), step_pos.view(B, 1), cache, logits="last")
        next_pos = next_pos + 1


def generate(model: ReferenceModel, prompts: Sequence[Sequence[int]],
             params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[GenerationResult]:
    results: list[GenerationResult] = []
    for _ in generate_stream(model, prompts, params, results):
        pass
    return results
