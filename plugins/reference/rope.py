"""Rotary position embedding with YaRN, half-split form (the same on HF and OpenAI's original layout).

Facts (OpenAI gpt_oss/torch/model.py RotaryEmbedding; transformers modeling_rope_utils._compute_yarn_parameters):
- frequencies base**(-2i/d); YaRN blends interpolated (1/(factor*f)) and extrapolated (1/f) frequencies with an
  NTK-by-parts ramp between dims low..high, low/high from beta_fast/beta_slow rotations over the original
  context; `truncate` floors/ceils low/high (gpt-oss: no truncation);
- cos and sin are multiplied by the concentration 0.1*ln(factor) + 1 (a temperature on q.k, via both q and k);
- rotation pairs dim i with dim i + d/2 (first half / second half), not adjacent dims.
"""

from __future__ import annotations

import math

import torch


def yarn_inv_freq(head_dim: int, theta: float, factor: float = 1.0, original_max_position: int = 4096,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = False,
                  kind: str = "yarn") -> tuple[torch.Tensor, float]:
    """-> (inv_freq float32 [head_dim/2], concentration)."""
    freq = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if kind != "yarn" or factor <= 1.0:
        return 1.0 / freq, 1.0
    concentration = 0.1 * math.log(factor) + 1.0          # YaRN attention temperature

    def correction_dim(rotations: float) -> float:        # dim at which the wavelength fits `rotations` times
        return head_dim * math.log(original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:                                           # HF's default; gpt-oss configs set truncate=False
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp                                 # 1 on fast (high-frequency) dims: keep them as-is
    inv_freq = (1.0 / (factor * freq)) * (1 - extrapolate) + (1.0 / freq) * extrapolate
    return inv_freq, concentration


def rope_frequencies(rope) -> tuple[torch.Tensor, float]:
    """A spec.network.Rope -> (inv_freq float32 [head_dim/2], concentration): yarn_inv_freq of its fields."""
    return yarn_inv_freq(rope.head_dim, rope.theta, rope.factor, rope.original_max_position, rope.beta_fast,
                         rope.beta_slow, rope.truncate, rope.kind)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, concentration: float):
    """positions (any int shape) -> cos, sin float32 [*positions.shape, head_dim/2], concentration applied."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device)
    return freqs.cos() * concentration, freqs.sin() * concentration


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, D] with cos/sin broadcastable to [..., T, D/2]. Half-split rotation: (x1, x2) halves."""
    x1, x2 = x.chunk(2, dim=-1)
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_full_tables(cos: torch.Tensor, sin: torch.Tensor):
    """Half tables [..., D/2] -> full-width (cos|cos, -sin|sin) [..., D] for apply_rope_full."""
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope_full(x: torch.Tensor, cos_full: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """apply_rope in three ops: x * (cos|cos) + (x2|x1) * (-sin|sin), (x2|x1) being x rolled by D/2."""
    return torch.addcmul(x * cos_full, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)
