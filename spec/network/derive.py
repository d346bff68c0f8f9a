"""Deriving a network definition: from a ModelConfig (the registry's or a checkpoint's config) and a quant
recipe. The reverse views, what a checkpoint config and the serving options must say for a network, are in
spec.network.views."""

from __future__ import annotations

import math
from typing import Mapping

from spec.network.schema import (KERNEL_MOE_BF16, KERNEL_SINK_ATTENTION, KERNEL_SINK_TOKENS, KERNEL_SLIDING_WINDOW,
                                 QUANT_GROUPS, Attention, DenseMLP, Embedding, ExpertLinear, Layer, Linear, MoE,
                                 Network, NetworkError, Norm, Rope, formats_allowed, gemm_kernels)
from spec.network.validate import validate
from spec.registry.models import ModelConfig
from spec.registry.quant_formats import QUANT_FORMATS


# ----------------------------------------------------------------------------------------------------------
def resolve_quant(quant: str | Mapping[str, str] | None) -> dict[str, str]:
    """A registry format name, or a {group: format} dict, -> the format of every group in QUANT_GROUPS.

    A format name applies to every group it covers (spec.registry.quant_formats: `applies_to`), e.g.
    "mxfp4" -> experts only, "nvfp4" -> attention, experts and dense MLP; the rest stays "bf16".
    """
    groups = {g: "bf16" for g in QUANT_GROUPS}
    if quant is None:
        return groups
    if isinstance(quant, str):
        if quant not in QUANT_FORMATS:
            raise NetworkError(f"quant: unknown format {quant!r}; valid formats: {', '.join(QUANT_FORMATS)} "
                               f"(or a dict of {{group: format}} over groups {', '.join(QUANT_GROUPS)})")
        for g in QUANT_GROUPS:
            if quant in formats_allowed(g):
                groups[g] = quant
        return groups
    for group, fmt in dict(quant).items():
        if group not in QUANT_GROUPS:
            raise NetworkError(f"quant[{group!r}]: unknown module group; valid groups: {', '.join(QUANT_GROUPS)}")
        if fmt not in formats_allowed(group):
            raise NetworkError(f"quant[{group!r}]: format {fmt!r} is not allowed for this group; "
                               f"allowed: {', '.join(formats_allowed(group))}")
        groups[group] = fmt
    return groups


def network_from_config(config: ModelConfig, quant: str | Mapping[str, str] | None = "bf16", *,
                        dtype: str = "bfloat16") -> Network:
    """Derive the network definition of a gpt-oss-family model from its ModelConfig.

    quant: a format name of spec.registry.quant_formats (applied to the groups it covers) or
    {group: format} over QUANT_GROUPS.
    """
    q = resolve_quant(quant)
    c = config
    rope = Rope(kind="yarn" if c.rope_scaling_factor > 1.0 else "default", head_dim=c.head_dim,
                theta=float(c.rope_theta), factor=float(c.rope_scaling_factor),
                original_max_position=int(c.rope_original_max_position), beta_fast=float(c.rope_beta_fast),
                beta_slow=float(c.rope_beta_slow), truncate=bool(c.rope_truncate))
    q_rows = c.num_q_heads * c.head_dim
    qkv_rows = (c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim

    def linear(weight, in_f, out_f, fmt, bias=True):
        return Linear(weight=weight + ".weight", bias=(weight + ".bias") if bias else None, in_features=in_f,
                      out_features=out_f, quant=fmt, kernels=gemm_kernels(fmt))

    def experts(weight, in_f, out_f, fmt):
        return ExpertLinear(weight=weight + ".weight", bias=weight + ".bias", num_experts=c.num_experts,
                            in_features=in_f, out_features=out_f, quant=fmt,
                            kernels=gemm_kernels(fmt))

    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        sliding = c.layer_is_sliding(i)
        attn_kernels = ((KERNEL_SINK_ATTENTION,) if c.learned_sinks else ()) + \
            ((KERNEL_SLIDING_WINDOW,) if sliding else ()) + \
            ((KERNEL_SINK_TOKENS,) if sliding and c.sink_tokens else ())
        attention = Attention(
            kind="sliding" if sliding else "full", window=c.sliding_window if sliding else None,
            num_q_heads=c.num_q_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
            sm_scale=1.0 / math.sqrt(c.head_dim),
            qkv=linear(f"{p}.attn.qkv", c.hidden_size, qkv_rows, q["attention"], c.attention_bias),
            out=linear(f"{p}.attn.out", q_rows, c.hidden_size, q["attention"], c.attention_bias),
            rope=rope, learned_sinks=c.learned_sinks, sinks=f"{p}.attn.sinks" if c.learned_sinks else None,
            sink_tokens=c.sink_tokens if sliding else 0, kernels=attn_kernels)
        if c.is_moe:
            fmt = q["experts"]
            mlp = MoE(num_experts=c.num_experts, top_k=c.experts_per_token,
                      router=linear(f"{p}.moe.router", c.hidden_size, c.num_experts, q["router"]),
                      gate=experts(f"{p}.moe.gate", c.hidden_size, c.intermediate_size, fmt),
                      up=experts(f"{p}.moe.up", c.hidden_size, c.intermediate_size, fmt),
                      down=experts(f"{p}.moe.down", c.intermediate_size, c.hidden_size, fmt),
                      swiglu_alpha=float(c.swiglu_alpha), swiglu_limit=float(c.swiglu_limit),
                      kernels=(KERNEL_MOE_BF16,) if fmt == "bf16" else gemm_kernels(fmt))
        else:
            fmt = q["mlp"]
            mlp = DenseMLP(gate=linear(f"{p}.mlp.gate", c.hidden_size, c.intermediate_size, fmt),
                           up=linear(f"{p}.mlp.up", c.hidden_size, c.intermediate_size, fmt),
                           down=linear(f"{p}.mlp.down", c.intermediate_size, c.hidden_size, fmt),
                           swiglu_alpha=float(c.swiglu_alpha), swiglu_limit=float(c.swiglu_limit))
        layers.append(Layer(index=i, attn_norm=Norm(f"{p}.attn_norm.scale", c.hidden_size, c.rms_norm_eps),
                            attention=attention,
                            mlp_norm=Norm(f"{p}.mlp_norm.scale", c.hidden_size, c.rms_norm_eps), mlp=mlp))
    net = Network(
        name=c.name, vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        max_position_embeddings=c.max_position_embeddings, dtype=dtype,
        embedding=Embedding("embed.weight", c.vocab_size, c.hidden_size, q["embed"]),
        layers=tuple(layers), final_norm=Norm("norm.scale", c.hidden_size, c.rms_norm_eps),
        lm_head=linear("lm_head", c.hidden_size, c.vocab_size, q["lm_head"], bias=False),
        eos_token_ids=tuple(int(t) for t in c.eos_token_ids),
        source=f"network_from_config({c.name!r}, quant={quant!r})")
    validate(net)
    return net


def network_from_checkpoint(checkpoint, quant: str | Mapping[str, str] | None = None, **kw) -> Network:
    """Derive the network of an opened checkpoint (checkpoint.convert.load_canonical(...)).

    quant=None reads the format off the checkpoint: the registry format a quantized checkpoint declares
    (`checkpoint.quant`, set by load_canonical for ModelOpt-style NVFP4/FP8 checkpoints), else packed MXFP4
    experts -> "mxfp4", otherwise "bf16".
    """
    config: ModelConfig = checkpoint.config
    if quant is None and getattr(checkpoint, "quant", None) not in (None, "bf16", "mxfp4"):
        quant = checkpoint.quant
    if quant is None:
        quant = "bf16"
        if config.is_moe:
            probe = "layers.0.moe.gate.weight"
            kind = checkpoint.dtype(probe) if hasattr(checkpoint, "dtype") else None
            if kind == "mxfp4" or (kind is None and type(checkpoint.get(probe)).__name__ == "MXFP4Weight"):
                quant = "mxfp4"
    return network_from_config(config, quant, **kw)
