"""Parameter counts and weight bytes, computed from a ModelConfig (never typed in).

Pure arithmetic. "Active" parameters are those a decoded token multiplies through: the top-k experts
of each layer, everything dense, and the unembedding; the embedding table is a lookup, not a matmul,
and is left out, as in OpenAI's model card (which gives 116.8B / 5.13B for 120b, 20.9B / 3.6B for 20b).
"""

from __future__ import annotations

from dataclasses import dataclass

from spec.registry.models import ModelConfig
from spec.registry.quant_formats import ALL_LINEARS, EXPERTS, QuantFormat

BF16_BYTES = 2


@dataclass(frozen=True)
class Component:
    """One group of parameters: matmul weights (quantizable) and the vectors beside them (biases,
    norm scales, sinks), which always stay bf16."""
    matmul: int
    vectors: int
    # Which quant coverage applies to the matmul weights: EXPERTS (MLP), ALL_LINEARS (attention), or
    # None for never-quantized matmuls (router, embedding, lm_head).
    quant_group: str | None
    # Fraction of the component a decoded token touches.
    active_fraction: float = 1.0

    @property
    def total(self) -> int:
        return self.matmul + self.vectors


def components(c: ModelConfig) -> dict[str, Component]:
    h, layers = c.hidden_size, c.num_layers
    q_width, kv_width = c.num_q_heads * c.head_dim, c.num_kv_heads * c.head_dim
    attn_matmul = h * q_width + 2 * h * kv_width + q_width * h
    attn_vectors = (q_width + 2 * kv_width + h) * c.attention_bias + c.num_q_heads * c.learned_sinks
    mlp_matmul = 3 * h * c.intermediate_size                  # gate, up, down
    mlp_vectors = 2 * c.intermediate_size + h                 # their biases
    parts = {
        "embedding": Component(c.vocab_size * h, 0, None, active_fraction=0.0),
        "attention": Component(layers * attn_matmul, layers * attn_vectors, ALL_LINEARS),
        "norms": Component(0, (2 * layers + 1) * h, None),
    }
    if c.is_moe:
        parts["router"] = Component(layers * c.num_experts * h, layers * c.num_experts, None)
        parts["experts"] = Component(layers * c.num_experts * mlp_matmul, layers * c.num_experts * mlp_vectors,
                                     EXPERTS, active_fraction=c.experts_per_token / c.num_experts)
    else:
        parts["mlp"] = Component(layers * mlp_matmul, layers * mlp_vectors, EXPERTS)
    if not c.tie_word_embeddings:
        parts["lm_head"] = Component(c.vocab_size * h, 0, None)
    return parts


def total_params(c: ModelConfig) -> int:
    return sum(p.total for p in components(c).values())


def active_params(c: ModelConfig) -> int:
    return round(sum(p.total * p.active_fraction for p in components(c).values()))


def _covered(quant: QuantFormat, group: str | None) -> bool:
    return group is not None and (quant.applies_to == ALL_LINEARS or quant.applies_to == group)


def component_bytes(comp: Component, quant: QuantFormat) -> float:
    bits = quant.bits_per_weight if _covered(quant, comp.quant_group) else 16
    return comp.matmul * bits / 8 + comp.vectors * BF16_BYTES


def weight_bytes(c: ModelConfig, quant: QuantFormat) -> dict[str, float]:
    """Bytes per component for a whole checkpoint in this format."""
    return {name: component_bytes(comp, quant) for name, comp in components(c).items()}


# Bytes per stored K or V value, per KV-cache dtype.
KV_DTYPE_BYTES = {"bf16": 2, "fp8": 1}


def kv_bytes_per_token_per_layer(num_kv_heads: int, head_dim: int, kv_dtype: str = "bf16") -> int:
    """One token's K and V in one attention layer: 2 x kv heads x head_dim x bytes per value (gpt-oss-20b,
    bf16: 2 x 8 x 64 x 2 = 2 KiB). The planner and the runtime's KV cache both size memory with this."""
    return 2 * num_kv_heads * head_dim * KV_DTYPE_BYTES[kv_dtype]
