"""The network definition of the gpt-oss family: one declared structure every target derives from.

A `Network` is plain data (frozen dataclasses, written as `network.json` with a `schema_version`). It says,
per layer: the attention kind (sliding window of N tokens, or full), learned sink logits, the StreamingLLM
sink-token count, the RoPE/YaRN parameters, the MLP (MoE with top-k and a biased router, or dense), the
clamped-SwiGLU constants, the norms, which canonical tensor (spec.canonical) each parameter is, the quant
format of every linear and the kernels ("plugins") every op needs. Targets (TensorRT-LLM options, engines,
the reference runtime in runtime/) read this; none of them re-reads a checkpoint config.

    net = network_from_config(config, quant="mxfp4")     # ModelConfig -> Network
    text = net.to_json(); net2 = Network.from_json(text)   # validated on load; errors name field and value

The per-module quant format is a name from the quant registry (spec.registry.quant_formats): "bf16"
(unquantized), "fp8", "mxfp4" (W4A16 experts, as gpt-oss ships), "w4a8-mxfp4-mxfp8", "nvfp4" (W4A4). Plugin
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

from spec.registry.models import ModelConfig
from spec.registry.quant_formats import ALL_LINEARS, EXPERTS, QUANT_FORMATS

SCHEMA_VERSION = 1


class NetworkError(ValueError):
    """A network definition that does not validate. The message names the field path and the bad value."""


# ----------------------------------------------------------------------------------------------------------
# Plugins: the kernels the ops need, named as spec.capabilities.KERNELS names them (the per-SM table keys
# on these), plus the StreamingLLM sink-token policy, which no serving stack offers yet.
# ----------------------------------------------------------------------------------------------------------
PLUGIN_SINK_ATTENTION = "attention_sinks"         # learned per-head sink logit as an extra softmax column
PLUGIN_SLIDING_WINDOW = "sliding_window"          # banded causal mask + ring-buffer KV cache
PLUGIN_SINK_TOKENS = "streaming_sink_tokens"      # StreamingLLM: first S tokens stay visible to SWA layers
PLUGIN_MOE_BF16 = "moe_bf16"                      # biased router, top-k then softmax over k, clamped SwiGLU
PLUGINS = (PLUGIN_SINK_ATTENTION, PLUGIN_SLIDING_WINDOW, PLUGIN_SINK_TOKENS, PLUGIN_MOE_BF16,
           "moe_mxfp4_w4a16", "moe_w4a8_mxfp4_mxfp8", "gemm_fp8", "gemm_nvfp4", "moe_nvfp4_w4a16")

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


def gemm_plugins(fmt: str) -> tuple[str, ...]:
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
    plugins: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpertLinear:
    """One projection of every expert: W [num_experts, out, in], b [num_experts, out]."""
    weight: str
    bias: str | None
    num_experts: int
    in_features: int
    out_features: int
    quant: str = "bf16"
    plugins: tuple[str, ...] = ()


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
    """Half-split rotary embedding; "yarn" adds NTK-by-parts frequencies and a cos/sin concentration."""
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
    plugins: tuple[str, ...] = ()

    @property
    def kv_slots(self) -> int | None:
        """KV entries a sliding layer keeps per sequence (window + sink tokens); None for full layers."""
        return None if self.kind == "full" else self.window + self.sink_tokens


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
    plugins: tuple[str, ...] = ()
    kind: str = "moe"


@dataclass(frozen=True)
class DenseMLP:
    gate: Linear
    up: Linear
    down: Linear
    activation: str = "clamped_swiglu"
    swiglu_alpha: float = 1.702
    swiglu_limit: float | None = 7.0
    plugins: tuple[str, ...] = ()
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
    def plugins(self) -> tuple[str, ...]:
        """Every kernel the network needs, in PLUGINS order."""
        used = set()
        for layer in self.layers:
            used.update(layer.attention.plugins)
            used.update(layer.attention.qkv.plugins)
            used.update(layer.attention.out.plugins)
            mlp = layer.mlp
            used.update(mlp.plugins)
            for sub in _mlp_linears(mlp):
                used.update(sub.plugins)
        used.update(self.lm_head.plugins)
        return tuple(p for p in PLUGINS if p in used)

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Network":
        if not isinstance(data, Mapping):
            raise NetworkError(f"network: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise NetworkError(f"schema_version: {version!r} is not supported (this code reads {SCHEMA_VERSION})")
        net = _from_dict(cls, data, "network")
        validate(net)
        return net

    @classmethod
    def from_json(cls, text: str) -> "Network":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise NetworkError(f"network.json is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "Network":
        with open(path) as f:
            return cls.from_json(f.read())


def _mlp_linears(mlp: MoE | DenseMLP) -> tuple:
    if isinstance(mlp, MoE):
        return (mlp.router, mlp.gate, mlp.up, mlp.down)
    return (mlp.gate, mlp.up, mlp.down)


# ----------------------------------------------------------------------------------------------------------
# Derivation from a checkpoint's config
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
                        dtype: str = "bfloat16", rope_truncate: bool = False) -> Network:
    """Derive the network definition of a gpt-oss-family model from its ModelConfig.

    quant: a format name of spec.registry.quant_formats (applied to the groups it covers) or
    {group: format} over QUANT_GROUPS. rope_truncate: HF's YaRN `truncate` flag (ModelConfig does not carry it; gpt-oss uses False).
    """
    q = resolve_quant(quant)
    c = config
    rope = Rope(kind="yarn" if c.rope_scaling_factor > 1.0 else "default", head_dim=c.head_dim,
                theta=float(c.rope_theta), factor=float(c.rope_scaling_factor),
                original_max_position=int(c.rope_original_max_position), beta_fast=float(c.rope_beta_fast),
                beta_slow=float(c.rope_beta_slow), truncate=bool(rope_truncate))
    q_rows = c.num_q_heads * c.head_dim
    qkv_rows = (c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim

    def linear(weight, in_f, out_f, fmt, bias=True):
        return Linear(weight=weight + ".weight", bias=(weight + ".bias") if bias else None, in_features=in_f,
                      out_features=out_f, quant=fmt, plugins=gemm_plugins(fmt))

    def experts(weight, in_f, out_f, fmt):
        return ExpertLinear(weight=weight + ".weight", bias=weight + ".bias", num_experts=c.num_experts,
                            in_features=in_f, out_features=out_f, quant=fmt,
                            plugins=gemm_plugins(fmt))

    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        sliding = c.layer_is_sliding(i)
        attn_plugins = ((PLUGIN_SINK_ATTENTION,) if c.learned_sinks else ()) + \
            ((PLUGIN_SLIDING_WINDOW,) if sliding else ()) + \
            ((PLUGIN_SINK_TOKENS,) if sliding and c.sink_tokens else ())
        attention = Attention(
            kind="sliding" if sliding else "full", window=c.sliding_window if sliding else None,
            num_q_heads=c.num_q_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
            sm_scale=1.0 / math.sqrt(c.head_dim),
            qkv=linear(f"{p}.attn.qkv", c.hidden_size, qkv_rows, q["attention"], c.attention_bias),
            out=linear(f"{p}.attn.out", q_rows, c.hidden_size, q["attention"], c.attention_bias),
            rope=rope, learned_sinks=c.learned_sinks, sinks=f"{p}.attn.sinks" if c.learned_sinks else None,
            sink_tokens=c.sink_tokens if sliding else 0, plugins=attn_plugins)
        if c.is_moe:
            fmt = q["experts"]
            mlp = MoE(num_experts=c.num_experts, top_k=c.experts_per_token,
                      router=linear(f"{p}.moe.router", c.hidden_size, c.num_experts, q["router"]),
                      gate=experts(f"{p}.moe.gate", c.hidden_size, c.intermediate_size, fmt),
                      up=experts(f"{p}.moe.up", c.hidden_size, c.intermediate_size, fmt),
                      down=experts(f"{p}.moe.down", c.intermediate_size, c.hidden_size, fmt),
                      swiglu_alpha=float(c.swiglu_alpha), swiglu_limit=float(c.swiglu_limit),
                      plugins=(PLUGIN_MOE_BF16,) if fmt == "bf16" else gemm_plugins(fmt))
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


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def _fail(path: str, value, why: str):
    raise NetworkError(f"{path}: {value!r} {why}")


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
    for kernel in gemm_plugins(lin.quant):
        if kernel not in lin.plugins:
            _fail(f"{path}.plugins", list(lin.plugins), f"must include {kernel!r} for quant {lin.quant!r}")
    _check_plugins(f"{path}.plugins", lin.plugins)
    if not lin.weight:
        _fail(f"{path}.weight", lin.weight, "must name a canonical tensor")


def _check_plugins(path, plugins):
    for p in plugins:
        if p not in PLUGINS:
            _fail(path, p, f"is not a known plugin ({', '.join(PLUGINS)})")


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
            if PLUGIN_SLIDING_WINDOW not in a.plugins:
                _fail(f"{pa}.plugins", list(a.plugins), f"must include {PLUGIN_SLIDING_WINDOW!r} for a sliding layer")
        else:
            if a.window is not None:
                _fail(f"{pa}.window", a.window, "must be null for full attention")
            if a.sink_tokens:
                _fail(f"{pa}.sink_tokens", a.sink_tokens, "must be 0 for full attention (it sees every token)")
        if not (isinstance(a.sink_tokens, int) and a.sink_tokens >= 0):
            _fail(f"{pa}.sink_tokens", a.sink_tokens, "must be an integer >= 0")
        if a.sink_tokens and PLUGIN_SINK_TOKENS not in a.plugins:
            _fail(f"{pa}.plugins", list(a.plugins), f"must include {PLUGIN_SINK_TOKENS!r} when sink_tokens > 0")
        if a.learned_sinks != (a.sinks is not None):
            _fail(f"{pa}.sinks", a.sinks, f"must name the sink tensor iff learned_sinks (= {a.learned_sinks})")
        if a.learned_sinks and PLUGIN_SINK_ATTENTION not in a.plugins:
            _fail(f"{pa}.plugins", list(a.plugins), f"must include {PLUGIN_SINK_ATTENTION!r} with learned sinks")
        _check_plugins(f"{pa}.plugins", a.plugins)
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
            need = (PLUGIN_MOE_BF16,) if m.gate.quant == "bf16" else gemm_plugins(m.gate.quant)
            for kernel in need:
                if kernel not in m.plugins:
                    _fail(f"{pm}.plugins", list(m.plugins), f"must include {kernel!r} for {m.gate.quant!r} experts")
            if len({m.gate.quant, m.up.quant, m.down.quant}) != 1:
                _fail(f"{pm}.down.quant", m.down.quant, f"must match gate/up ({m.gate.quant!r}): one MoE kernel")
            _check_plugins(f"{pm}.plugins", m.plugins)
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


__all__ = ["SCHEMA_VERSION", "NetworkError", "Network", "Layer", "Attention", "MoE", "DenseMLP", "Linear",
           "ExpertLinear", "Norm", "Rope", "Embedding", "QUANT_GROUPS", "formats_allowed", "gemm_plugins",
           "network_from_checkpoint",
           "PLUGINS", "network_from_config", "resolve_quant", "validate"]


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
