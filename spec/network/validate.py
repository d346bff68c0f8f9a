"""Validation of a network definition, and the loaders that apply it: every field in range, every shape
consistent with the others, every quant format allowed for its module group, every kernel known.
Errors (NetworkError) name the field path and the bad value."""

from __future__ import annotations

import json
from typing import Any, Mapping

from spec.network.schema import (ACTIVATIONS, ATTENTION_KINDS, DTYPES, NORM_KINDS, KERNEL_MOE_BF16,
                                 KERNEL_SINK_ATTENTION, KERNEL_SINK_TOKENS, KERNEL_SLIDING_WINDOW, KERNEL_NAMES,
                                 RETIRED_VERSIONS, ROPE_KINDS, SCHEMA_VERSION, MoE, Network, NetworkError, Norm, Rope, _fail,
                                 _from_dict, formats_allowed, gemm_kernels)
from spec.bounds import EngineValueError, check_int, check_number, check_token_ids
from spec.registry.quant_formats import QUANT_FORMATS


# ----------------------------------------------------------------------------------------------------------
def _positive(path, value):
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        _fail(path, value, "must be a positive integer")


def _check_linear(path: str, lin, allowed: tuple[str, ...], in_f: int | None = None, out_f: int | None = None):
    _positive(f"{path}.in_features", lin.in_features)
    _positive(f"{path}.out_features", lin.out_features)
    if in_f is not None and lin.in_features != in_f:
        _fail(f"{path}.in_features", lin.in_features, f"must be {in_f}")
    if out_f is not None and lin.out_features != out_f:
        _fail(f"{path}.out_features", lin.out_features, f"must be {out_f}")
    if lin.quant not in QUANT_FORMATS:
        _fail(f"{path}.quant", lin.quant, f"is not a known quant format ({', '.join(QUANT_FORMATS)})")
    if lin.quant not in allowed:
        _fail(f"{path}.quant", lin.quant, f"is not allowed here ({', '.join(allowed)})")
    for kernel in gemm_kernels(lin.quant):
        if kernel not in lin.kernels:
            _fail(f"{path}.kernels", list(lin.kernels), f"must include {kernel!r} for quant {lin.quant!r}")
    _check_kernels(f"{path}.kernels", lin.kernels)
    if not lin.weight:
        _fail(f"{path}.weight", lin.weight, "must name a canonical tensor")


def _check_kernels(path, kernels):
    for p in kernels:
        if p not in KERNEL_NAMES:
            _fail(path, p, f"is not a known kernel ({', '.join(KERNEL_NAMES)})")


def _check_norm(path: str, norm: Norm, size: int):
    if norm.kind not in NORM_KINDS:
        _fail(f"{path}.kind", norm.kind, f"is not a known norm ({', '.join(NORM_KINDS)})")
    if norm.size != size:
        _fail(f"{path}.size", norm.size, f"must equal hidden_size {size}")
    if not (norm.eps > 0):
        _fail(f"{path}.eps", norm.eps, "must be > 0")
    if norm.compute_dtype != "float32":
        _fail(f"{path}.compute_dtype", norm.compute_dtype, "must be 'float32'")


def _check_rope(path: str, rope: Rope, head_dim: int):
    if rope.kind not in ROPE_KINDS:
        _fail(f"{path}.kind", rope.kind, f"is not a known RoPE kind ({', '.join(ROPE_KINDS)})")
    if rope.head_dim != head_dim:
        _fail(f"{path}.head_dim", rope.head_dim, f"must equal the attention head_dim {head_dim}")
    if head_dim % 2:
        _fail(f"{path}.head_dim", head_dim, "must be even (half-split rotary)")
    if not rope.theta > 1:
        _fail(f"{path}.theta", rope.theta, "must be > 1")
    if rope.kind == "yarn":
        if not rope.factor >= 1:
            _fail(f"{path}.factor", rope.factor, "must be >= 1")
        _positive(f"{path}.original_max_position", rope.original_max_position)
        if not (rope.beta_fast > rope.beta_slow > 0):
            _fail(f"{path}.beta_fast", rope.beta_fast, f"must exceed beta_slow ({rope.beta_slow}) > 0")


def _linear_bounds(path: str, lin) -> None:
    check_int("", f"{path}.in_features", lin.in_features, "features")
    check_int("", f"{path}.out_features", lin.out_features, "features")
    if hasattr(lin, "num_experts"):
        check_int("", f"{path}.num_experts", lin.num_experts, "experts")


def check_bounds(net: Network) -> None:
    """Every size, limit and id of the network inside spec.bounds' declared ranges (EngineValueError).
    Checked after the structure (whose checks size nothing), so a structural mistake keeps its own message."""
    check_int("", "layers (count)", len(net.layers), "layers")
    check_int("", "vocab_size", net.vocab_size, "vocab_size")
    check_int("", "hidden_size", net.hidden_size, "hidden_size")
    check_int("", "max_position_embeddings", net.max_position_embeddings, "positions")
    check_token_ids("", "eos_token_ids", list(net.eos_token_ids), net.vocab_size)
    for name, norm in (("final_norm", net.final_norm),):
        check_number("", f"{name}.eps", norm.eps, "eps")
    _linear_bounds("lm_head", net.lm_head)
    for i, layer in enumerate(net.layers):
        p = f"layers[{i}]"
        check_number("", f"{p}.attn_norm.eps", layer.attn_norm.eps, "eps")
        check_number("", f"{p}.mlp_norm.eps", layer.mlp_norm.eps, "eps")
        a, pa = layer.attention, f"{p}.attention"
        check_int("", f"{pa}.num_q_heads", a.num_q_heads, "heads")
        check_int("", f"{pa}.num_kv_heads", a.num_kv_heads, "heads")
        check_int("", f"{pa}.head_dim", a.head_dim, "head_dim")
        check_number("", f"{pa}.sm_scale", a.sm_scale, "sm_scale")
        if a.window is not None:
            check_int("", f"{pa}.window", a.window, "window")
        check_int("", f"{pa}.sink_tokens", a.sink_tokens, "sink_tokens")
        check_number("", f"{pa}.rope.theta", a.rope.theta, "rope_theta")
        check_number("", f"{pa}.rope.factor", a.rope.factor, "rope_factor")
        check_int("", f"{pa}.rope.original_max_position", a.rope.original_max_position, "positions")
        check_number("", f"{pa}.rope.beta_fast", a.rope.beta_fast, "rope_beta")
        check_number("", f"{pa}.rope.beta_slow", a.rope.beta_slow, "rope_beta")
        _linear_bounds(f"{pa}.qkv", a.qkv)
        _linear_bounds(f"{pa}.out", a.out)
        m, pm = layer.mlp, f"{p}.mlp"
        check_number("", f"{pm}.swiglu_alpha", m.swiglu_alpha, "swiglu")
        if m.swiglu_limit is not None:
            check_number("", f"{pm}.swiglu_limit", m.swiglu_limit, "swiglu")
        if isinstance(m, MoE):
            check_int("", f"{pm}.num_experts", m.num_experts, "experts")
            check_int("", f"{pm}.top_k", m.top_k, "top_k")
            _linear_bounds(f"{pm}.router", m.router)
        for name in ("gate", "up", "down"):
            _linear_bounds(f"{pm}.{name}", getattr(m, name))


def validate(net: Network) -> None:
    """Raise NetworkError naming the first bad field (path and value)."""
    if net.schema_version != SCHEMA_VERSION:
        _fail("schema_version", net.schema_version, f"is not supported (this code reads {SCHEMA_VERSION})")
    for name in ("vocab_size", "hidden_size", "max_position_embeddings"):
        _positive(name, getattr(net, name))
    if net.dtype not in DTYPES:
        _fail("dtype", net.dtype, f"is not a known dtype ({', '.join(DTYPES)})")
    H, V = net.hidden_size, net.vocab_size
    if (net.embedding.vocab_size, net.embedding.hidden_size) != (V, H):
        _fail("embedding", (net.embedding.vocab_size, net.embedding.hidden_size), f"must be (vocab, hidden) = {(V, H)}")
    if net.embedding.quant not in formats_allowed("embed"):
        _fail("embedding.quant", net.embedding.quant, f"is not allowed ({', '.join(formats_allowed('embed'))})")
    if not net.layers:
        _fail("layers", [], "must hold at least one layer")
    for i, layer in enumerate(net.layers):
        p = f"layers[{i}]"
        if layer.index != i:
            _fail(f"{p}.index", layer.index, f"must be {i} (layers are listed in order)")
        _check_norm(f"{p}.attn_norm", layer.attn_norm, H)
        _check_norm(f"{p}.mlp_norm", layer.mlp_norm, H)
        a = layer.attention
        pa = f"{p}.attention"
        if a.kind not in ATTENTION_KINDS:
            _fail(f"{pa}.kind", a.kind, f"is not an attention kind ({', '.join(ATTENTION_KINDS)})")
        for name in ("num_q_heads", "num_kv_heads", "head_dim"):
            _positive(f"{pa}.{name}", getattr(a, name))
        if a.num_q_heads % a.num_kv_heads:
            _fail(f"{pa}.num_kv_heads", a.num_kv_heads, f"must divide num_q_heads {a.num_q_heads} (GQA)")
        if not a.sm_scale > 0:
            _fail(f"{pa}.sm_scale", a.sm_scale, "must be > 0")
        if a.kind == "sliding":
            _positive(f"{pa}.window", a.window)
            if KERNEL_SLIDING_WINDOW not in a.kernels:
                _fail(f"{pa}.kernels", list(a.kernels), f"must include {KERNEL_SLIDING_WINDOW!r} for a sliding layer")
        else:
            if a.window is not None:
                _fail(f"{pa}.window", a.window, "must be null for full attention")
            if a.sink_tokens:
                _fail(f"{pa}.sink_tokens", a.sink_tokens, "must be 0 for full attention (it sees every token)")
        if not (isinstance(a.sink_tokens, int) and a.sink_tokens >= 0):
            _fail(f"{pa}.sink_tokens", a.sink_tokens, "must be an integer >= 0")
        if a.sink_tokens and KERNEL_SINK_TOKENS not in a.kernels:
            _fail(f"{pa}.kernels", list(a.kernels), f"must include {KERNEL_SINK_TOKENS!r} when sink_tokens > 0")
        if a.learned_sinks != (a.sinks is not None):
            _fail(f"{pa}.sinks", a.sinks, f"must name the sink tensor iff learned_sinks (= {a.learned_sinks})")
        if a.learned_sinks and KERNEL_SINK_ATTENTION not in a.kernels:
            _fail(f"{pa}.kernels", list(a.kernels), f"must include {KERNEL_SINK_ATTENTION!r} with learned sinks")
        _check_kernels(f"{pa}.kernels", a.kernels)
        qkv_rows = (a.num_q_heads + 2 * a.num_kv_heads) * a.head_dim
        _check_linear(f"{pa}.qkv", a.qkv, formats_allowed("attention"), H, qkv_rows)
        _check_linear(f"{pa}.out", a.out, formats_allowed("attention"), a.num_q_heads * a.head_dim, H)
        _check_rope(f"{pa}.rope", a.rope, a.head_dim)
        m = layer.mlp
        pm = f"{p}.mlp"
        if m.activation not in ACTIVATIONS:
            _fail(f"{pm}.activation", m.activation, f"is not known ({', '.join(ACTIVATIONS)})")
        if m.swiglu_limit is not None and not m.swiglu_limit > 0:
            _fail(f"{pm}.swiglu_limit", m.swiglu_limit, "must be > 0 or null (no clamp)")
        if isinstance(m, MoE):
            _positive(f"{pm}.num_experts", m.num_experts)
            _positive(f"{pm}.top_k", m.top_k)
            if m.top_k > m.num_experts:
                _fail(f"{pm}.top_k", m.top_k, f"must be <= num_experts {m.num_experts}")
            need = (KERNEL_MOE_BF16,) if m.gate.quant == "bf16" else gemm_kernels(m.gate.quant)
            for kernel in need:
                if kernel not in m.kernels:
                    _fail(f"{pm}.kernels", list(m.kernels), f"must include {kernel!r} for {m.gate.quant!r} experts")
            if len({m.gate.quant, m.up.quant, m.down.quant}) != 1:
                _fail(f"{pm}.down.quant", m.down.quant, f"must match gate/up ({m.gate.quant!r}): one MoE kernel")
            _check_kernels(f"{pm}.kernels", m.kernels)
            _check_linear(f"{pm}.router", m.router, formats_allowed("router"), H, m.num_experts)
            inter = m.gate.out_features
            for name, in_f, out_f in (("gate", H, inter), ("up", H, inter), ("down", inter, H)):
                sub = getattr(m, name)
                if sub.num_experts != m.num_experts:
                    _fail(f"{pm}.{name}.num_experts", sub.num_experts, f"must be {m.num_experts}")
                _check_linear(f"{pm}.{name}", sub, formats_allowed("experts"), in_f, out_f)
        else:
            inter = m.gate.out_features
            for name, in_f, out_f in (("gate", H, inter), ("up", H, inter), ("down", inter, H)):
                _check_linear(f"{pm}.{name}", getattr(m, name), formats_allowed("mlp"), in_f, out_f)
    _check_norm("final_norm", net.final_norm, H)
    _check_linear("lm_head", net.lm_head, formats_allowed("lm_head"), H, V)
    try:
        check_bounds(net)
    except EngineValueError as e:
        raise NetworkError(str(e)) from None


def network_from_dict(data: Mapping[str, Any]) -> Network:
    """Parse (strictly: unknown or missing keys and wrong types are errors) and validate."""
    if not isinstance(data, Mapping):
        raise NetworkError(f"network: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version in RETIRED_VERSIONS:
        raise NetworkError(f"schema_version {version} is no longer read (this code reads {SCHEMA_VERSION}): "
                           f"{RETIRED_VERSIONS[version]}")
    if version != SCHEMA_VERSION:
        raise NetworkError(f"schema_version: {version!r} is not supported (this code reads {SCHEMA_VERSION})")
    net = _from_dict(Network, data, "network")
    validate(net)
    return net


def network_from_json(text: str) -> Network:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise NetworkError(f"network.json is not valid JSON: {e}") from None
    return network_from_dict(data)


# network.json of gpt-oss-120b is about 100 KB; a file this large is not one build-engine wrote.
MAX_NETWORK_BYTES = 16 * 2**20


def load_network(path) -> Network:
    """network.json -> a validated Network; NetworkError names the file on any problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_NETWORK_BYTES + 1)
        if len(text) > MAX_NETWORK_BYTES:
            raise NetworkError(f"{path}: larger than {MAX_NETWORK_BYTES} bytes, far more than any network.json "
                               f"build-engine writes; rebuild the engine")
    except (OSError, UnicodeDecodeError) as e:
        raise NetworkError(f"{path}: cannot read ({e})") from None
    try:
        return network_from_json(text)
    except NetworkError as e:
        raise NetworkError(f"{path}: {e}") from None
