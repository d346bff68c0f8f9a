"""config.json <-> ModelConfig for the HF (transformers 5.x and 4.x) and OpenAI original formats.

HF 5.x keeps RoPE in `rope_parameters` (rope_theta inside); 4.x used `rope_scaling` plus a top-level
`rope_theta`. OpenAI's original config has exactly sixteen keys and its loader (`ModelConfig(**json)`)
raises on any other, so we write exactly those and refuse unknown ones when reading.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from checkpoint import limits
from checkpoint.errors import CheckpointError
from spec.registry.models import MODELS, ModelConfig

OPENAI_KEYS = ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
               "intermediate_size", "swiglu_limit", "head_dim", "num_attention_heads", "num_key_value_heads",
               "sliding_window", "initial_context_length", "rope_theta", "rope_scaling_factor",
               "rope_ntk_alpha", "rope_ntk_beta")
# What OpenAI's reference hard-codes rather than configures.
OPENAI_FIXED = {"swiglu_alpha": 1.702, "rms_norm_eps": 1e-5}
# transformers' GptOssConfig defaults, used when an HF config leaves RoPE out.
HF_DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                   "original_max_position_embeddings": 4096, "rope_theta": 150000.0}
_ROPE_KEYS = {"rope_type", "type", "factor", "beta_fast", "beta_slow", "truncate",
              "original_max_position_embeddings", "rope_theta"}
# Fields that describe a registry entry rather than an architecture.
_DESCRIPTIVE = ("name", "hf_repo", "source", "notes", "eos_token_ids")
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes is not a config")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; fix: point at a checkpoint folder with its config.json") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]}); fix: restore the "
                              f"checkpoint's config.json") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror}); fix: check the file and its permissions") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object; fix: restore the checkpoint's config.json")
    return data


def config_kind(raw: dict) -> str:
    """'hf' or 'openai', from the keys alone."""
    if "model_type" in raw or "architectures" in raw or "num_local_experts" in raw:
        return "hf"
    if "experts_per_token" in raw and "num_experts" in raw:
        return "openai"
    return "unknown"


def _need(raw: dict, key: str, where: Path):
    if key not in raw or raw[key] is None:
        raise CheckpointError(f"{where}: key {key!r} is missing; fix: add it (see the model's released config.json)")
    return raw[key]


def _rope_from_hf(raw: dict, where: Path) -> dict:
    if raw.get("rope_parameters") is not None:
        rope = dict(raw["rope_parameters"])
    elif raw.get("rope_scaling") is not None:             # transformers 4.x
        rope = dict(raw["rope_scaling"])
        rope.setdefault("rope_theta", raw.get("rope_theta", HF_DEFAULT_ROPE["rope_theta"]))
    elif "rope_theta" in raw:                              # 4.x without scaling: plain RoPE
        rope = {"rope_type": "default", "rope_theta": raw["rope_theta"]}
    else:
        rope = dict(HF_DEFAULT_ROPE)
    unknown = sorted(set(rope) - _ROPE_KEYS)
    if unknown:
        raise CheckpointError(f"{where}: RoPE keys {unknown} are not supported (gpt-oss uses plain YaRN: "
                              f"{sorted(_ROPE_KEYS)}); fix: remove them or convert a gpt-oss-style config")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("yarn", "default"):
        raise CheckpointError(f"{where}: rope_type {kind!r} is not supported; fix: use 'yarn' or 'default'")
    if kind == "yarn" and rope.get("truncate", True):
        # transformers floors/ceils the YaRN ramp ends unless truncate is false; gpt-oss (and OpenAI's
        # reference) never does. Silently accepting it would run a slightly different RoPE.
        raise CheckpointError(f"{where}: YaRN with truncate={rope.get('truncate', '<missing, means true>')} is "
                              f"not gpt-oss's RoPE; fix: set \"truncate\": false in the RoPE parameters "
                              f"(gpt-oss's released config has it)")
    return {"rope_theta": float(rope.get("rope_theta", HF_DEFAULT_ROPE["rope_theta"])),
            "rope_scaling_factor": float(rope.get("factor", 1.0)) if kind == "yarn" else 1.0,
            "rope_original_max_position": int(rope.get("original_max_position_embeddings",
                                                       raw.get("max_position_embeddings", 4096))),
            "rope_beta_fast": float(rope.get("beta_fast") or 32.0),
            "rope_beta_slow": float(rope.get("beta_slow") or 1.0)}


def model_config_from_hf(raw: dict, name: str, where: Path) -> ModelConfig:
    n_layers = int(_need(raw, "num_hidden_layers", where))
    heads = int(_need(raw, "num_attention_heads", where))
    hidden = int(_need(raw, "hidden_size", where))
    layer_types = raw.get("layer_types")
    expected = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    if layer_types is not None and list(layer_types) != expected:
        raise CheckpointError(f"{where}: layer_types {layer_types} is not gpt-oss's alternation (sliding on "
                              f"even layers, full on odd); fix: this pipeline only builds that pattern")
    if raw.get("sliding_window") is None:
        raise CheckpointError(f"{where}: sliding_window is null; fix: set it (gpt-oss uses 128)")
    eos = raw.get("eos_token_id")
    eos = () if eos is None else (tuple(eos) if isinstance(eos, list) else (int(eos),))
    return ModelConfig(
        name=name, num_layers=n_layers, hidden_size=hidden,
        head_dim=int(raw.get("head_dim") or hidden // heads), num_q_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        vocab_size=int(_need(raw, "vocab_size", where)), mlp="moe",
        intermediate_size=int(_need(raw, "intermediate_size", where)),
        num_experts=int(_need(raw, "num_local_experts", where)),
        experts_per_token=int(_need(raw, "num_experts_per_tok", where)),
        swiglu_alpha=float(raw.get("swiglu_alpha", 1.702)), swiglu_limit=float(raw.get("swiglu_limit", 7.0)),
        sliding_window=int(raw["sliding_window"]),
        max_position_embeddings=int(raw.get("max_position_embeddings", 131072)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        attention_bias=bool(raw.get("attention_bias", True)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        eos_token_ids=eos, **_rope_from_hf(raw, where))


def model_config_from_openai(raw: dict, name: str, where: Path) -> ModelConfig:
    unknown = sorted(set(raw) - set(OPENAI_KEYS))
    missing = [k for k in OPENAI_KEYS if k not in raw]
    if unknown or missing:
        raise CheckpointError(f"{where}: OpenAI original config keys disagree with gpt-oss's: missing {missing}, "
                              f"unexpected {unknown}; fix: its loader accepts exactly {list(OPENAI_KEYS)}")
    ctx, factor = int(raw["initial_context_length"]), float(raw["rope_scaling_factor"])
    return ModelConfig(
        name=name, num_layers=int(raw["num_hidden_layers"]), hidden_size=int(raw["hidden_size"]),
        head_dim=int(raw["head_dim"]), num_q_heads=int(raw["num_attention_heads"]),
        num_kv_heads=int(raw["num_key_value_heads"]), vocab_size=int(raw["vocab_size"]), mlp="moe",
        intermediate_size=int(raw["intermediate_size"]), num_experts=int(raw["num_experts"]),
        experts_per_token=int(raw["experts_per_token"]), swiglu_limit=float(raw["swiglu_limit"]),
        sliding_window=int(raw["sliding_window"]), rope_theta=float(raw["rope_theta"]),
        rope_scaling_factor=factor, rope_original_max_position=ctx,
        rope_beta_fast=float(raw["rope_ntk_beta"]), rope_beta_slow=float(raw["rope_ntk_alpha"]),
        max_position_embeddings=int(ctx * max(factor, 1.0)), **OPENAI_FIXED)


def match_registry(config: ModelConfig) -> ModelConfig:
    """The registry entry with the same architecture (its name and description), else `config` as is."""
    def arch(c):
        return {k: v for k, v in dataclasses.asdict(c).items() if k not in _DESCRIPTIVE}
    for model in MODELS.values():
        if arch(model) == arch(config):
            return dataclasses.replace(model, eos_token_ids=config.eos_token_ids or model.eos_token_ids)
    return config


def read_model_config(folder: str | Path) -> tuple[ModelConfig, str, dict]:
    """(ModelConfig, 'hf' | 'openai', raw config dict) of a checkpoint folder."""
    folder = Path(folder)
    where = folder / "config.json"
    raw = read_json(where)
    kind = config_kind(raw)
    name = folder.resolve().name
    limits.check_raw_types(raw, where)
    try:
        config = _parse(raw, kind, name, where)
    except CheckpointError:
        raise
    except (TypeError, ValueError, OverflowError, AttributeError) as e:
        raise CheckpointError(f"{where}: a value has the wrong type or size ({type(e).__name__}: {e}); fix: "
                              f"restore the config.json that came with these weights") from None
    limits.check_config(config, where)
    return match_registry(config), kind, raw


def _parse(raw: dict, kind: str, name: str, where: Path) -> ModelConfig:
    if kind == "hf":
        if raw.get("model_type", "gpt_oss") != "gpt_oss":
            raise CheckpointError(f"{where}: model_type {raw['model_type']!r} is not gpt_oss; fix: convert a "
                                  f"gpt-oss-family checkpoint")
        config = model_config_from_hf(raw, name, where)
    elif kind == "openai":
        config = model_config_from_openai(raw, name, where)
    else:
        raise CheckpointError(f"{where}: neither an HF gpt_oss config (model_type, num_local_experts) nor an OpenAI "
                              f"original one (num_experts, experts_per_token); fix: point at a gpt-oss checkpoint")
    return config


def model_config_from_checkpoint(folder: str | Path) -> ModelConfig:
    return read_model_config(folder)[0]


# -- writing ----------------------------------------------------------------------------------------
def hf_config_dict(config: ModelConfig, mxfp4: bool, dtype: str = "bfloat16") -> dict:
    """transformers 5.x GptOssConfig as it saves one (rope_parameters, swiglu_alpha)."""
    rope = ({"rope_type": "yarn", "factor": config.rope_scaling_factor, "beta_fast": config.rope_beta_fast,
             "beta_slow": config.rope_beta_slow, "truncate": False,
             "original_max_position_embeddings": config.rope_original_max_position}
            if config.rope_scaling_factor > 1.0 else {"rope_type": "default"})
    rope["rope_theta"] = config.rope_theta
    out = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "dtype": dtype,
        "num_hidden_layers": config.num_layers, "hidden_size": config.hidden_size, "head_dim": config.head_dim,
        "num_attention_heads": config.num_q_heads, "num_key_value_heads": config.num_kv_heads,
        "vocab_size": config.vocab_size, "intermediate_size": config.intermediate_size,
        "num_local_experts": config.num_experts, "num_experts_per_tok": config.experts_per_token,
        "swiglu_alpha": config.swiglu_alpha, "swiglu_limit": config.swiglu_limit,
        "sliding_window": config.sliding_window, "layer_types": config.layer_types,
        "max_position_embeddings": config.max_position_embeddings, "rope_parameters": rope,
        "rms_norm_eps": config.rms_norm_eps, "attention_bias": config.attention_bias, "attention_dropout": 0.0,
        "hidden_act": "silu", "initializer_range": 0.02, "tie_word_embeddings": config.tie_word_embeddings,
        "output_router_logits": False, "use_cache": True,
    }
    if config.eos_token_ids:
        out["eos_token_id"] = (list(config.eos_token_ids) if len(config.eos_token_ids) > 1
                               else config.eos_token_ids[0])
    if mxfp4:
        out["quantization_config"] = {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"]}
    return out


def openai_config_dict(config: ModelConfig) -> dict:
    lost = {k: getattr(config, k) for k, v in OPENAI_FIXED.items() if getattr(config, k) != v}
    if lost:
        raise CheckpointError(f"the OpenAI original format hard-codes {OPENAI_FIXED} and cannot express {lost}; "
                              f"fix: convert to --to hf or hf-mxfp4 instead")
    return {"num_hidden_layers": config.num_layers, "num_experts": config.num_experts,
            "experts_per_token": config.experts_per_token, "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
            "swiglu_limit": config.swiglu_limit, "head_dim": config.head_dim,
            "num_attention_heads": config.num_q_heads, "num_key_value_heads": config.num_kv_heads,
            "sliding_window": config.sliding_window, "initial_context_length": config.rope_original_max_position,
            "rope_theta": config.rope_theta, "rope_scaling_factor": config.rope_scaling_factor,
            "rope_ntk_alpha": config.rope_beta_slow, "rope_ntk_beta": config.rope_beta_fast}
