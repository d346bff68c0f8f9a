"""RMSNorm as gpt-oss computes it: statistic and scale multiply in fp32, eps 1e-5, cast back after."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H] any float dtype, scale [H] -> x's dtype. x * rsqrt(mean(x^2) + eps) * scale, all in fp32,
    the scale applied before the cast back (HF GptOssRMSNorm: "main diff with Llama")."""
    if x.dtype == torch.float32 and scale.dtype == torch.float32:
        return torch.rms_norm(x, (x.shape[-1],), scale, eps)
    return torch.rms_norm(x.float(), (x.shape[-1],), scale.float(), eps).to(x.dtype)
