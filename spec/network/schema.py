"""The network definition's data types: frozen dataclasses (written as network.json with a `schema_version`),
the kernels ops need from a target, and the strict typed parsing every loader uses.

The per-module quant format is a name from the quant registry (spec.registry.quant_formats): "bf16"
(unquantized), "fp8", "mxfp4" (W4A16 experts, as gpt-oss ships), "nvfp4" (W4A4), "nvfp4-w4a16". Kernel
names are spec.capabilities.KERNELS keys, so a target looks each op's kernels up per SM.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from spec.capabilities import KERNELS
from spec.registry.quant_formats import ALL_LINEARS, EXPERTS, QUANT_FORMATS

# The network definition's file name in an engine directory.
NETWORK_FILE = "network.json"
# 2: the per-op field "plugins" became "kernels" (one word for what a network needs from a target).
SCHEMA_VERSION = 2
# Versions this code no longer reads, and what to tell the user who has one.
RETIRED_VERSIONS = {1: 'it names kernels "plugins"; rebuild the engine with build-engine (or rename every '
                       '"plugins" key to "kernels" and set schema_version 2)'}


class NetworkError(ValueError):
    """A network definition that does not validate. The message names the field path and the bad value."""


# Kernels: what the ops need from a target, named as spec.capabilities.KERNELS names them (the per-SM table
# keys on these). The ones an op asks for by name; GEMM kernels come from the quant format (gemm_kernels).
# ----------------------------------------------------------------------------------------------------------
KERNEL_SINK_ATTENTION = "attention_sinks"         # learned per-head sink logit as an extra softmax column
KERNEL_SLIDING_WINDOW = "sliding_window"          # banded causal mask + ring-buffer KV cache
KERNEL_SINK_TOKENS = "streaming_sink_tokens"      # StreamingLLM: first S tokens stay visible to SWA layers
KERNEL_MOE_BF16 = "moe_bf16"                      # biased router, top-k then softmax over k, clamped SwiGLU
KERNEL_NAMES = tuple(KERNELS)

# Quant formats are the registry's (spec.registry.quant_formats): its names, what each covers
# (experts only, or every linear) and the kernels each needs. "bf16" is the unquantized path.
# Module groups a quant recipe addresses. Embeddings, lm_head and routers stay unquantized in every format.
QUANT_GROUPS = ("embed", "lm_head", "router", "attention", "experts", "mlp")
_GROUP_COVERAGE = {"embed": (), "lm_head": (), "router": (), "attention": (ALL_LINEARS,),
                   "experts": (EXPERTS, ALL_LINEARS), "mlp": (ALL_LINEARS,)}


def formats_allowed(group: str) -> tuple[str, ...]:
    """Quant formats a module group may take: bf16, plus every registry format that covers the group."""
    return ("bf16",) + tuple(name for name, f in QUANT_FORMATS.items()
                             if name != "bf16" and f.applies_to in _GROUP_COVERAGE[group])


def gemm_kernels(fmt: str) -> tuple[str, ...]:
    """Kernels a linear (or the experts' GEMMs) in this format needs; () for plain bf16 GEMMs."""
    return tuple(QUANT_FORMATS[fmt].kernels)


ATTENTION_KINDS = ("sliding", "full")
NORM_KINDS = ("rmsnorm",)
ROPE_KINDS = ("yarn", "default")
ACTIVATIONS = ("clamped_swiglu",)
DTYPES = ("bfloat16", "float16", "float32")


# ----------------------------------------------------------------------------------------------------------
# The definition
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Linear:
    """y = x @ W.T + b. `weight`/`bias` are canonical tensor names (spec.canonical); W is [out, in]."""
    weight: str
    bias: str | None
    in_features: int
    out_features: int
    quant: str = "bf16"
    kernels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpertLinear:
    """One projection of every expert: W [num_experts, out, in], b [num_experts, out]."""
    weight: str
    bias: str | None
    num_experts: int
    in_features: int
    out_features: int
    quant: str = "bf16"
    kernels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Norm:
    weight: str
    size: int
    eps: float = 1e-5
    kind: str = "rmsnorm"
    # The statistic and the scale multiply run in fp32 whatever the activation dtype.
    compute_dtype: str = "float32"


@dataclass(frozen=True)
class Rope:
    """Half-split rotary embedding; "yarn" adds NTK-by-parts frequencies and a cos/sin concentration. Frozen,
    so hashable: a Rope is the key for its cos/sin tables in every target (layers with equal Ropes share them)."""
    kind: str
    head_dim: int
    theta: float
    factor: float = 1.0
    original_max_position: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # HF `truncate`: floor/ceil the ramp bounds. gpt-oss configs say False, as does OpenAI's reference.
    truncate: bool = False

    @property
    def concentration(self) -> float:
        """YaRN's attention factor, multiplied into cos and sin: 0.1 * ln(factor) + 1."""
        return 0.1 * math.log(self.factor) + 1.0 if self.kind == "yarn" and self.factor > 1.0 else 1.0


@dataclass(frozen=True)
class CacheKind:
    """What a layer's KV cache keeps, the key every target groups layers by (one slot-position table, one
    mask per kind): full (window None, every token), or a sliding window of `window` tokens plus the first
    `sink_tokens` (StreamingLLM) kept beyond it."""
    window: int | None = None
    sink_tokens: int = 0

    @property
    def full(self) -> bool:
        return self.window is None

    @property
    def slots(self) -> int | None:
        """KV entries a sequence holds (window + sink tokens); None for full layers (they grow)."""
        return None if self.full else self.window + self.sink_tokens


FULL_CACHE = CacheKind()


@dataclass(frozen=True)
class Attention:
    kind: str                         # "sliding" | "full"
    window: int | None                # sliding: a query at i sees keys j with i - j < window; full: None
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    sm_scale: float
    qkv: Linear                       # merged q|k|v rows
    out: Linear
    rope: Rope
    learned_sinks: bool               # per-head sink logit: extra softmax column, dropped after
    sinks: str | None                 # canonical tensor name of the sink logits [num_q_heads]
    sink_tokens: int = 0              # StreamingLLM: first S tokens stay visible beyond the window (sliding only)
    kernels: tuple[str, ...] = ()

    @property
    def cache_kind(self) -> CacheKind:
        """Full, or window + sink tokens: the one derivation of a layer's cache kind."""
        return FULL_CACHE if self.kind == "full" else CacheKind(self.window, self.sink_tokens)

    @property
    def kv_slots(self) -> int | None:
        """KV entries a sliding layer keeps per sequence (window + sink tokens); None for full layers."""
        return self.cache_kind.slots


@dataclass(frozen=True)
class MoE:
    num_experts: int
    top_k: int
    router: Linear                    # logits = x @ Wr.T + br; top-k of the logits, then softmax over the k
    gate: ExpertLinear
    up: ExpertLinear
    down: ExpertLinear
    activation: str = "clamped_swiglu"
    swiglu_alpha: float = 1.702
    # gate clamped above at limit, up clamped to [-limit, limit]; None disables the clamp (a negative control)
    swiglu_limit: float | None = 7.0
    kernels: tuple[str, ...] = ()
    kind: str = "moe"


@dataclass(frozen=True)
class DenseMLP:
    gate: Linear
    up: Linear
    down: Linear
    activation: str = "clamped_swiglu"
    swiglu_alpha: float = 1.702
    swiglu_limit: float | None = 7.0
    kernels: tuple[str, ...] = ()
    kind: str = "dense"


@dataclass(frozen=True)
class Layer:
    index: int
    attn_norm: Norm
    attention: Attention
    mlp_norm: Norm
    mlp: MoE | DenseMLP


@dataclass(frozen=True)
class Embedding:
    weight: str
    vocab_size: int
    hidden_size: int
    quant: str = "bf16"


@dataclass(frozen=True)
class Network:
    name: str
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: str                        # activation dtype engines run in
    embedding: Embedding
    layers: tuple[Layer, ...]
    final_norm: Norm
    lm_head: Linear
    eos_token_ids: tuple[int, ...] = ()
    schema_version: int = SCHEMA_VERSION
    source: str = ""

    # -- derived views --------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def kernels(self) -> tuple[str, ...]:
        """Every kernel the network needs, in KERNEL_NAMES order."""
        used = set()
        for layer in self.layers:
            used.update(layer.attention.kernels)
            used.update(layer.attention.qkv.kernels)
            used.update(layer.attention.out.kernels)
            mlp = layer.mlp
            used.update(mlp.kernels)
            for sub in _mlp_linears(mlp):
                used.update(sub.kernels)
        used.update(self.lm_head.kernels)
        return tuple(p for p in KERNEL_NAMES if p in used)

    @property
    def experts_quant(self) -> str | None:
        """The quant format of the experts' GEMMs (None for a dense network)."""
        mlps = [layer.mlp for layer in self.layers if isinstance(layer.mlp, MoE)]
        return mlps[0].gate.quant if mlps else None

    def quant_formats(self) -> tuple[str, ...]:
        used = {self.embedding.quant, self.lm_head.quant}
        for layer in self.layers:
            used.update({layer.attention.qkv.quant, layer.attention.out.quant})
            used.update(sub.quant for sub in _mlp_linears(layer.mlp))
        return tuple(q for q in QUANT_FORMATS if q in used)

    # -- serialization --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = _to_dict(self)
        # schema_version first, for humans reading network.json
        return {"schema_version": d.pop("schema_version"), **d}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path) -> None:
        with open(path, "w") as f:
            f.write(self.to_json() + "\n")


def _mlp_linears(mlp: MoE | DenseMLP) -> tuple:
    if isinstance(mlp, MoE):
        return (mlp.router, mlp.gate, mlp.up, mlp.down)
    return (mlp.gate, mlp.up, mlp.down)


def _fail(path: str, value, why: str):
    raise NetworkError(f"{path}: {value!r} {why}")


# ----------------------------------------------------------------------------------------------------------
# Strict (de)serialization of the dataclasses above: unknown or missing keys and wrong types are errors.
# ----------------------------------------------------------------------------------------------------------
def _to_dict(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_dict(v) for v in obj]
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _from_dict(cls, data, path: str):
    if not isinstance(data, Mapping):
        _fail(path, data, f"must be an object ({cls.__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise NetworkError(f"{path}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise NetworkError(f"{path}.{name}: missing (required by {cls.__name__})")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{path}.{name}")
    return cls(**kwargs)


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            _fail(path, value, "must not be null")
        options = [a for a in args if a is not type(None)]
        if all(dataclasses.is_dataclass(a) for a in options):  # MoE | DenseMLP: discriminated by "kind"
            kinds = {a.__dataclass_fields__["kind"].default: a for a in options}
            kind = value.get("kind") if isinstance(value, Mapping) else None
            if kind not in kinds:
                _fail(f"{path}.kind", kind, f"must be one of {sorted(kinds)}")
            return _from_dict(kinds[kind], value, path)
        if len(options) == 1:
            return _convert(options[0], value, path)
        _fail(path, value, f"has an unsupported type {tp}")
    if origin is tuple:
        if not isinstance(value, list):
            _fail(path, value, "must be a list")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, value, "must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(path, value, "must be a string")
        return value
    raise NetworkError(f"{path}: unsupported field type {tp}")
