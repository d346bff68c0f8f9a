"""Sane ranges for a checkpoint's config, checked before any per-layer work.

A 1 KB config.json can ask for a billion layers or a NaN RoPE factor; everything built from it (name
tables, shapes, caches, RoPE tables) would then cost memory in proportion, or silently build another
model. So: every value has the JSON type it must have, every size lies in a range far above any
gpt-oss-family model and far below what would exhaust a machine, every float the model divides by or
exponentiates is finite and positive, and the layer count agrees with the tensors actually stored.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from checkpoint.errors import CheckpointError

# Integer sizes: (smallest, largest). The largest are 4-64x the biggest released gpt-oss values.
INT_RANGES = {
    "num_layers": (1, 1024), "hidden_size": (1, 1 << 16), "head_dim": (2, 1024), "num_q_heads": (1, 1024),
    "num_kv_heads": (1, 1024), "vocab_size": (1, 1 << 22), "intermediate_size": (1, 1 << 18),
    "num_experts": (1, 4096), "experts_per_token": (1, 4096), "sliding_window": (1, 1 << 24),
    "max_position_embeddings": (1, 1 << 24), "rope_original_max_position": (1, 1 << 24),
}
# Floats the model needs finite and positive, with an upper bound; "factor" may also be exactly 1.
FLOAT_RANGES = {
    "swiglu_alpha": (0.0, 1e4), "swiglu_limit": (0.0, 1e6), "rope_theta": (0.0, 1e12),
    "rope_beta_fast": (0.0, 1e6), "rope_beta_slow": (0.0, 1e6), "rms_norm_eps": (0.0, 1.0),
}
FACTOR_RANGE = (1.0, 1e4)
MOE_ONLY = ("num_experts", "experts_per_token")

# config.json keys (HF and OpenAI spellings) and the JSON type each must have.
RAW_INTS = ("num_hidden_layers", "hidden_size", "head_dim", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "intermediate_size", "num_local_experts", "num_experts_per_tok", "num_experts",
            "experts_per_token", "sliding_window", "max_position_embeddings", "initial_context_length",
            "original_max_position_embeddings")
RAW_FLOATS = ("swiglu_alpha", "swiglu_limit", "rms_norm_eps", "rope_theta", "rope_scaling_factor", "rope_ntk_alpha",
              "rope_ntk_beta", "factor", "beta_fast", "beta_slow")
# Largest integer any config.json key may hold, before parsing (the parsed ranges above are then exact);
# per-layer lists are built from num_hidden_layers, so it is capped here already.
RAW_INT_MAX = {"num_hidden_layers": INT_RANGES["num_layers"][1]}
RAW_INT_DEFAULT_MAX = 1 << 24
RAW_BOOLS = ("attention_bias", "tie_word_embeddings", "truncate")
RAW_DICTS = ("rope_parameters", "rope_scaling", "quantization_config")

_LAYER = re.compile(r"(?:^|\.)(?:layers|block)\.(\d+)\.")


def _fail(where, what: str, fix: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}; fix: {fix}")


def _check_raw_value(key: str, v, where) -> None:
    if v is None:
        return
    if key in RAW_INTS:
        ok = type(v) is int or (type(v) is float and math.isfinite(v) and v.is_integer())
        want = "an integer"
    elif key in RAW_FLOATS:
        ok = type(v) in (int, float)
        want = "a number"
    elif key in RAW_BOOLS:
        ok = type(v) is bool
        want = "true or false"
    elif key in RAW_DICTS:
        ok = isinstance(v, dict)
        want = "an object"
    else:
        return
    if not ok:
        raise _fail(where, f"{key} is {json_repr(v)}, not {want}",
                    f"set {key} to {want} (see the model's released config.json)")
    if key in RAW_INTS and not 0 < v <= RAW_INT_MAX.get(key, RAW_INT_DEFAULT_MAX):
        raise _fail(where, f"{key} = {json_repr(v)} is outside [1, {RAW_INT_MAX.get(key, RAW_INT_DEFAULT_MAX)}]",
                    f"use the config.json that came with these weights")


def json_repr(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def check_raw_types(raw: dict, where) -> None:
    """Every known key of a config.json (and of its RoPE object) has the JSON type it must have."""
    for key, v in raw.items():
        _check_raw_value(key, v, where)
    for rope_key in ("rope_parameters", "rope_scaling"):
        rope = raw.get(rope_key)
        if isinstance(rope, dict):
            for key, v in rope.items():
                _check_raw_value(key, v, f"{where} ({rope_key})")
                if key in RAW_FLOATS + RAW_INTS and v is not None and not (math.isfinite(v) and v > 0):
                    raise _fail(where, f"{rope_key}.{key} is {v}; it must be a finite number > 0",
                                f"restore {rope_key}.{key} from the model's released config.json")
    if "layer_types" in raw and raw["layer_types"] is not None and not (
            isinstance(raw["layer_types"], list) and len(raw["layer_types"]) <= INT_RANGES["num_layers"][1]):
        raise _fail(where, "layer_types is not a list of at most "
                    f"{INT_RANGES['num_layers'][1]} names", "restore layer_types or remove it")
    eos = raw.get("eos_token_id")
    if eos is not None and not (type(eos) is int or (isinstance(eos, list) and len(eos) <= 64
                                                     and all(type(e) is int for e in eos))):
        raise _fail(where, f"eos_token_id is {json_repr(eos)}, not an integer or a short list of them",
                    "set eos_token_id to the end-of-sequence token id(s)")


def check_config(config, where) -> None:
    """A parsed ModelConfig: sizes in range, floats finite and positive, the cross-field rules of gpt-oss."""
    for name, (lo, hi) in INT_RANGES.items():
        if name in MOE_ONLY and getattr(config, "mlp", "moe") != "moe":
            continue
        v = getattr(config, name)
        if not lo <= v <= hi:
            raise _fail(where, f"{name} = {v} is outside [{lo}, {hi}]",
                        "use the config.json that came with these weights")
    for name, (lo, hi) in FLOAT_RANGES.items():
        v = getattr(config, name)
        if not (math.isfinite(v) and lo < v <= hi):
            raise _fail(where, f"{name} = {v}; it must be a finite number in ({lo:g}, {hi:g}]",
                        "restore it from the model's released config.json")
    f = config.rope_scaling_factor
    if not (math.isfinite(f) and FACTOR_RANGE[0] <= f <= FACTOR_RANGE[1]):
        raise _fail(where, f"the RoPE scaling factor is {f}; it must be a finite number in "
                    f"[{FACTOR_RANGE[0]:g}, {FACTOR_RANGE[1]:g}] (1 = plain RoPE)",
                    "restore rope_parameters.factor (gpt-oss: 32) from the released config.json")
    if f > 1.0 and not config.rope_beta_fast > config.rope_beta_slow:
        raise _fail(where, f"YaRN beta_fast {config.rope_beta_fast} is not above beta_slow {config.rope_beta_slow}",
                    "gpt-oss uses beta_fast 32, beta_slow 1")
    if config.head_dim % 2:
        raise _fail(where, f"head_dim {config.head_dim} is odd; rotary embeddings need an even one",
                    "use the config.json that came with these weights")
    if config.num_q_heads % config.num_kv_heads:
        raise _fail(where, f"num_attention_heads {config.num_q_heads} is not a multiple of num_key_value_heads "
                    f"{config.num_kv_heads}", "use the config.json that came with these weights")
    if getattr(config, "mlp", "moe") == "moe" and config.experts_per_token > config.num_experts:
        raise _fail(where, f"experts per token {config.experts_per_token} exceeds the {config.num_experts} experts",
                    "experts per token (top-k) must be at most the number of experts")


def stored_layers(names) -> int:
    """How many transformer layers the stored tensor names hold (highest index + 1; 0 if none)."""
    top = -1
    for n in names:
        m = _LAYER.search(n)
        if m:
            top = max(top, int(m.group(1)))
    return top + 1


def check_against_tensors(config, names, folder: Path) -> None:
    """The layer count agrees with the tensors stored, before anything is expanded per layer."""
    n = stored_layers(names)
    if n != config.num_layers:
        beyond = sorted(x for x in names if (m := _LAYER.search(x)) and int(m.group(1)) >= config.num_layers)
        held = (f"tensors exist for layer {n - 1} ({', '.join(beyond[:3])}{', ...' if len(beyond) > 3 else ''})"
                if n > config.num_layers else f"the tensors hold only {n}")
        raise CheckpointError(f"{folder / 'config.json'}: the config says {config.num_layers} layers but {held}; fix: use the config.json that came with these weights, "
                              f"and make sure all shards are present")
