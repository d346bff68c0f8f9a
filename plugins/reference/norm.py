"""RMSNorm as gpt-oss computes it: statistic and scale multiply in fp32, eps 1e-5, cast back after."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)
    return (t * scale.float()).to(x.dtype)     # scale applied in fp32, before the cast (HF: "main diff with Llama")
