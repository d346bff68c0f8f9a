"""What other targets must say for a network: the checkpoint config (config.json, read by TensorRT-LLM, vLLM and
transformers) viewed as the fields a network determines, and the check that the two agree.

network.json is the declared structure; a config.json that disagrees with it would make TensorRT-LLM run another
network than the one declared, so every consumer that reads config.json instead of network.json calls
`check_config_matches` first and refuses an engine whose two files disagree.
"""

from __future__ import annotations

from spec.network.schema import MoE, Network, NetworkError
from spec.registry.models import ModelConfig


def _rope_fields(kind: str, theta: float, factor: float, original: int, beta_fast: float, beta_slow: float,
                 truncate: bool) -> dict:
    out = {"rope_type": kind, "rope_theta": float(theta)}
    if kind == "yarn":
        out.update(factor=float(factor), original_max_position_embeddings=int(original),
                   beta_fast=float(beta_fast), beta_slow=float(beta_slow), truncate=bool(truncate))
    return out


def config_view_of_network(net: Network) -> dict:
    """The checkpoint-config fields `net` determines, in config.json's names."""
    first = net.layers[0]
    a, mlp = first.attention, first.mlp
    windows = sorted({layer.attention.window for layer in net.layers if layer.attention.kind == "sliding"})
    view = {
        "num_hidden_layers": net.num_layers, "hidden_size": net.hidden_size, "vocab_size": net.vocab_size,
        "max_position_embeddings": net.max_position_embeddings, "head_dim": a.head_dim,
        "num_attention_heads": a.num_q_heads, "num_key_value_heads": a.num_kv_heads,
        "layer_types": [f"{layer.attention.kind}_attention" for layer in net.layers],
        "sliding_window": windows[0] if len(windows) == 1 else windows or None,
        "learned_sinks": all(layer.attention.learned_sinks for layer in net.layers),
        "sink_tokens": max(layer.attention.sink_tokens for layer in net.layers),
        "attention_bias": a.qkv.bias is not None,
        "rms_norm_eps": first.attn_norm.eps,
        "rope": _rope_fields(a.rope.kind, a.rope.theta, a.rope.factor, a.rope.original_max_position,
                             a.rope.beta_fast, a.rope.beta_slow, a.rope.truncate),
        "mlp": "moe" if isinstance(mlp, MoE) else "dense",
        "intermediate_size": mlp.down.in_features,
        "num_local_experts": mlp.num_experts if isinstance(mlp, MoE) else 0,
        "num_experts_per_tok": mlp.top_k if isinstance(mlp, MoE) else 0,
        "swiglu_alpha": mlp.swiglu_alpha, "swiglu_limit": mlp.swiglu_limit,
    }
    return view


def config_view_of_model(c: ModelConfig) -> dict:
    """The same fields as a checkpoint config (parsed into a ModelConfig) states them."""
    return {
        "num_hidden_layers": c.num_layers, "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings, "head_dim": c.head_dim,
        "num_attention_heads": c.num_q_heads, "num_key_value_heads": c.num_kv_heads,
        "layer_types": [t for t in c.layer_types],
        "sliding_window": c.sliding_window if c.num_sliding_layers else None,
        "learned_sinks": c.learned_sinks, "sink_tokens": c.sink_tokens, "attention_bias": c.attention_bias,
        "rms_norm_eps": c.rms_norm_eps,
        "rope": _rope_fields("yarn" if c.rope_scaling_factor > 1.0 else "default", c.rope_theta,
                             c.rope_scaling_factor, c.rope_original_max_position, c.rope_beta_fast,
                             c.rope_beta_slow, c.rope_truncate),
        "mlp": "moe" if c.is_moe else "dense", "intermediate_size": c.intermediate_size,
        "num_local_experts": c.num_experts if c.is_moe else 0,
        "num_experts_per_tok": c.experts_per_token if c.is_moe else 0,
        "swiglu_alpha": c.swiglu_alpha, "swiglu_limit": c.swiglu_limit,
    }


def config_mismatches(net: Network, config: ModelConfig) -> list[str]:
    """'field: network.json says X, config.json says Y' for every field where they disagree."""
    ours, theirs = config_view_of_network(net), config_view_of_model(config)
    out = []
    for key, value in ours.items():
        if theirs[key] != value:
            shown = (lambda v: v if not isinstance(v, list) or len(v) < 8 else f"[{v[0]}, {v[1]}, ... {len(v)} items]")
            out.append(f"{key}: network.json says {shown(value)}, config.json says {shown(theirs[key])}")
    return out


def check_config_matches(net: Network, config: ModelConfig, where: str = "the engine") -> None:
    """NetworkError listing every disagreement between network.json and the checkpoint config."""
    bad = config_mismatches(net, config)
    if bad:
        raise NetworkError(f"{where}: network.json and config.json disagree ({'; '.join(bad)}); a runtime that reads "
                           f"config.json would run another network than the declared one: rebuild the engine with "
                           f"build-engine, or restore the edited file")
