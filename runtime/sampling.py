"""Sampling: greedy, temperature, top-k, top-p, seeded per request.

A request's random stream is its own torch.Generator (seeded from SamplingParams.seed), so a seeded request
draws the same tokens whatever else shares its batch. Logprobs are of the model's raw distribution
(log_softmax of the logits, before temperature / top-k / top-p).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# The smallest positive temperature: logits / temperature must stay finite in float32 (|logit| ~ 1e2 here
# gives 1e6); below it a request is an error up front, not a NaN distribution in the middle of a batch.
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0          # 0: greedy (argmax; ties -> lowest id)
    top_k: int = 0                    # 0: off
    top_p: float = 1.0                # 1.0: off
    seed: int | None = None           # None: nondeterministic
    stop_token_ids: tuple[int, ...] | None = None   # None: the network's eos_token_ids; (): none
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # multi-token stops: the output ending with one stops it
    logprobs: bool = False            # per generated token, its logprob under the raw distribution
    return_logits: bool = False       # float32 logits [n_generated, vocab] of every generated step
    prompt_logits: bool = False       # float32 logits [prompt_len, vocab] of every prompt position

    def __post_init__(self):
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature < float("inf")):
            raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, "
                             f"got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop_sequences", tuple(tuple(int(t) for t in s) for s in self.stop_sequences if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def stop_hit(output: list[int], stop_ids, stop_sequences=()) -> bool:
    """The output's last token is a stop token, or the output ends with one of the stop sequences."""
    if not output:
        return False
    if output[-1] in stop_ids:
        return True
    for seq in stop_sequences:
        n = len(seq)
        if n and len(output) >= n and tuple(output[-n:]) == tuple(seq):
            return True
    return False


def make_generator(params: SamplingParams, device="cpu") -> torch.Generator | None:
    if params.greedy:
        return None
    g = torch.Generator(device=device)
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed(int(params.seed))
    return g


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [V] (already temperature-scaled) -> logits with the excluded tokens at -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept)
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """logits float32 [B, V] -> token ids [B] (long)."""
    out = logits.argmax(dim=-1)
    if all(p.greedy for p in params):
        return out
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = filter_logits(logits[i] / p.temperature, p.top_k, p.top_p)
        out[i] = torch.multinomial(torch.softmax(row, dim=-1), 1, generator=generators[i])[0]
    return out
