"""The step interface every executor implements; runtime.api.Runtime generates over any of them.

    cache = ex.new_cache(batch_size, capacity)        # capacity: a hint (full-attention slots to reserve)
    logits = ex.forward(input_ids, positions, cache, logits="all" | "last")

input_ids, positions: long [B, T]; position -1 marks padding or a finished sequence (it writes nothing
that is ever attended to); a sequence's tokens are contiguous and increasing. "all" -> float32 [B, T, V],
"last" -> float32 [B, V] at each sequence's last valid token. The cache is the executor's own object,
updated in place by forward. runtime.model.ReferenceModel is the reference implementation of this protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from spec.network import Network


@runtime_checkable
class Executor(Protocol):
    network: Network
    device: torch.device

    def new_cache(self, batch_size: int, capacity: int = 256): ...

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache,
                logits: str = "last") -> torch.Tensor: ...
