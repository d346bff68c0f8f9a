"""config.json <-> ModelConfig for the HF (transformers 5.x and 4.x) and OpenAI original formats.

HF 5.x keeps RoPE in `rope_parameters` (rope_theta inside); 4.x used `rope_scaling` plus a top-level
`rope_theta`. OpenAI's original config has exactly sixteen keys and its loader (`ModelConfig(**json)`)
raises on any other, so we write exactly those and refuse unknown ones when reading.

The dense variant (a ModelConfig with mlp="dense") has no upstream format. Its config.json is transformers'
GptOssConfig with `model_type` "gpt_oss_dense" (architectures ["GptOssDenseForCausalLM"]) and without the
expert keys (num_local_experts, num_experts_per_tok, router_aux_loss_coef, output_router_logits); its own
model_type makes transformers refuse it instead of loading it as a MoE with random experts. Its tensors:
checkpoint/convert/tables.py (HF_DENSE_*).

Every architecture flag read here is honoured downstream or refused: `layer_types` (any per-layer
sliding/full pattern, ModelConfig.attention_layers), `attention_bias` (false: no q/k/v/o bias tensors),
`tie_word_embeddings`. Learned sinks have no flag in either format (gpt-oss always has them), so writing
a model without them is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from checkpoint import limits
from checkpoint.errors import CheckpointError
from spec.registry.models import LAYER_TYPES, MODELS, ModelConfig

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
_DESCRIPTIVE = ("name", "hf_repo", "hf_repo_quant", "source", "notes", "eos_token_ids")
MAX_CONFIG_BYTES = 16 * 1024 * 1024
# HF model_type -> the ModelConfig.mlp it declares.
HF_MODEL_TYPES = {"gpt_oss": "moe", "gpt_oss_dense": "dense"}
HF_ARCHITECTURES = {"moe": "GptOssForCausalLM", "dense": "GptOssDenseForCausalLM"}
_HF_EXPERT_KEYS = ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "output_router_logits")


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
    # transformers floors/ceils the YaRN ramp ends unless truncate is false, and reads a missing key as true
    # (_compute_yarn_parameters); gpt-oss ships false. Either way is carried into the network (Rope.truncate).
    truncate = rope.get("truncate", True)
    if not isinstance(truncate, bool):
        raise CheckpointError(f"{where}: RoPE truncate is {truncate!r}, not true or false; fix: set \"truncate\": "
                              f"false (gpt-oss's released config) or true")
    return {"rope_theta": float(rope.get("rope_theta", HF_DEFAULT_ROPE["rope_theta"])),
            "rope_scaling_factor": float(rope.get("factor", 1.0)) if kind == "yarn" else 1.0,
            "rope_original_max_position": int(rope.get("original_max_position_embeddings",
                                                       raw.get("max_position_embeddings", 4096))),
            "rope_beta_fast": float(rope.get("beta_fast") or 32.0),
            "rope_beta_slow": float(rope.get("beta_slow") or 1.0),
            "rope_truncate": truncate if kind == "yarn" else False}


def _layer_types(raw: dict, n_layers: int, where: Path) -> tuple[str, ...]:
    """HF `layer_types` -> ModelConfig.attention_layers (any pattern; the alternation normalises to ())."""
    kinds = raw.get("layer_types")
    if kinds is None:
        return ()
    if not isinstance(kinds, list) or len(kinds) != n_layers or any(k not in LAYER_TYPES for k in kinds):
        raise CheckpointError(f"{where}: layer_types must list one of {list(LAYER_TYPES)} for each of the "
                              f"{n_layers} layers (num_hidden_layers), got {kinds!r}; fix: correct it, or remove it "
                              f"for gpt-oss's alternation (sliding on even layers, full on odd)")
    return tuple(kinds)


def _mlp_fields(raw: dict, mlp: str, where: Path) -> dict:
    if mlp == "dense":
        stray = [k for k in _HF_EXPERT_KEYS[:2] if raw.get(k) is not None]
        if stray:
            raise CheckpointError(f"{where}: model_type gpt_oss_dense (one dense MLP per layer) but the config has "
                                  f"expert keys {stray}; fix: remove them, or use model_type gpt_oss for a MoE")
        return {"mlp": "dense"}
    return {"mlp": "moe", "num_experts": int(_need(raw, "num_local_experts", where)),
            "experts_per_token": int(_need(raw, "num_experts_per_tok", where))}


def model_config_from_hf(raw: dict, name: str, where: Path) -> ModelConfig:
    n_layers = int(_need(raw, "num_hidden_layers", where))
    heads = int(_need(raw, "num_attention_heads", where))
    hidden = int(_need(raw, "hidden_size", where))
    mlp = HF_MODEL_TYPES.get(raw.get("model_type", "gpt_oss"), "moe")
    if raw.get("sliding_window") is None:
        raise CheckpointError(f"{where}: sliding_window is null; fix: set it (gpt-oss uses 128)")
    eos = raw.get("eos_token_id")
    eos = () if eos is None else (tuple(eos) if isinstance(eos, list) else (int(eos),))
    return ModelConfig(
        name=name, num_layers=n_layers, hidden_size=hidden,
        head_dim=int(raw.get("head_dim") or hidden // heads), num_q_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        vocab_size=int(_need(raw, "vocab_size", where)), **_mlp_fields(raw, mlp, where),
        intermediate_size=int(_need(raw, "intermediate_size", where)),
        attention_layers=_layer_types(raw, n_layers, where),
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


def architecture_diff(a: ModelConfig, b: ModelConfig) -> dict[str, tuple]:
    """{field: (a's value, b's value)} over the architecture fields where two configs differ."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return {k: (da[k], db[k]) for k in da if k not in _DESCRIPTIVE and da[k] != db[k]}


def match_registry(config: ModelConfig) -> ModelConfig:
    """The registry entry with the same architecture (its name and description), else `config` as is."""
    for model in MODELS.values():
        if not architecture_diff(model, config):
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
        if raw.get("model_type", "gpt_oss") not in HF_MODEL_TYPES:
            raise CheckpointError(f"{where}: model_type {raw['model_type']!r} is not one of {list(HF_MODEL_TYPES)}; "
                                  f"fix: convert a gpt-oss-family checkpoint")
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
             "beta_slow": config.rope_beta_slow, "truncate": config.rope_truncate,
             "original_max_position_embeddings": config.rope_original_max_position}
            if config.rope_scaling_factor > 1.0 else {"rope_type": "default"})
    rope["rope_theta"] = config.rope_theta
    if not config.learned_sinks:
        raise CheckpointError(f"model {config.name!r} has no learned sinks, which an HF gpt-oss config cannot say "
                              f"(transformers always creates them); fix: keep learned_sinks=True")
    if mxfp4 and not config.is_moe:
        raise CheckpointError(f"model {config.name!r} has a dense MLP; MXFP4 checkpoints hold experts only; "
                              f"fix: write it unquantized (--to hf)")
    out = {
        "architectures": [HF_ARCHITECTURES[config.mlp]],
        "model_type": next(t for t, m in HF_MODEL_TYPES.items() if m == config.mlp), "dtype": dtype,
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
    if not config.is_moe:
        for key in _HF_EXPERT_KEYS:
            out.pop(key, None)
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
    # OpenAI's reference (gpt_oss/torch/model.py) always builds experts, biased q/k/v/o, sinks, and slides
    # on even layers, and never truncates YaRN's ramp; a model without one of those cannot be written in its format.
    fixed = {"mlp": "moe", "attention_bias": True, "learned_sinks": True, "rope_truncate": False}
    lost = {k: getattr(config, k) for k, v in {**OPENAI_FIXED, **fixed}.items() if getattr(config, k) != v}
    if not config.alternating_layers:
        lost["layer_types"] = config.layer_types
    if lost:
        raise CheckpointError(f"the OpenAI original format hard-codes {OPENAI_FIXED}, experts, q/k/v/o biases, "
                              f"learned sinks, sliding windows on even layers and an untruncated YaRN ramp, and cannot express {lost}; "
                              f"fix: convert to --to hf" + (" or hf-mxfp4" if config.is_moe else "") + " instead")
    return {"num_hidden_layers": config.num_layers, "num_experts": config.num_experts,
            "experts_per_token": config.experts_per_token, "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
            "swiglu_limit": config.swiglu_limit, "head_dim": config.head_dim,
            "num_attention_heads": config.num_q_heads, "num_key_value_heads": config.num_kv_heads,
            "sliding_window": config.sliding_window, "initial_context_length": config.rope_original_max_position,
            "rope_theta": config.rope_theta, "rope_scaling_factor": config.rope_scaling_factor,
            "rope_ntk_alpha": config.rope_beta_slow, "rope_ntk_beta": config.rope_beta_fast}
