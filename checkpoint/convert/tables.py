"""Name tables: each checkpoint format's tensors, as data.

Per format:
- SHAPES: every tensor the format stores, `{layer}` patterns -> (kind, shape from the ModelConfig);
  kind "float" (BF16/F16/F32) or "u8" (MXFP4 blocks and e8m0 scales).
- ROWS: one `Row` per group of tensors that convert together, declared once for both directions: the stored
  (source-format) patterns, the canonical patterns, the read quirk that builds each canonical value from the
  stored ones and the write quirk that builds each stored tensor from the canonical ones. A row with no
  canonical names is a stored tensor we deliberately ignore (canonical None, as gpt-fast's weight map).
- READ, WRITE and DROPPED are derived from the rows (`Format.read`, `.write`, `.dropped`):
  READ: canonical pattern -> (quirk, source pattern, ...); WRITE: target pattern (or a tuple of patterns one
  quirk writes together) -> (quirk, canonical pattern, ...); DROPPED: source pattern -> None.
- FEATURES (quantized formats): optional parts of a format, each with its own SHAPES and ROWS:
  "input_scales" (calibrated activation scales, W4A4/W8A8) and "kv_scales" (FP8 KV cache). A checkpoint
  holds a feature's tensors all or none; which it holds is read from its quant config.

Stored kinds: "float" (BF16/F16/F32), "u8" (packed FP4 bytes, e8m0 scales), "f8" (float8_e4m3fn),
"scalar" (a float32 [] scale).

checkpoint.convert.mapping expands them per layer and checks both directions exhaustively: every source
tensor used or dropped, every canonical tensor built once, every target tensor written once. Negative controls
that need a broken table edit one row with `with_row`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from checkpoint.convert import quant_quirks as qq
from checkpoint.convert import quirks as q

Quirk = Callable[..., object]


@dataclass(frozen=True)
class Row:
    """Stored `source` tensors <-> `canonical` tensors, both ways:

        canonical[i] = read[i](config, *source)        one read quirk per canonical name
        targets[j]   = write[j](config, *canonical)    one write quirk per target (see `targets`)

    `read` or `write` may be empty only in a negative control's edited row (`with_row`)."""
    source: tuple[str, ...]
    canonical: tuple[str, ...] = ()
    read: tuple[Quirk, ...] = ()
    write: tuple[Quirk, ...] = ()
    # What each write quirk writes, when that is not the rule in `targets` (FP8 q/k/v: weight and scale pairs).
    write_as: tuple[str | tuple[str, ...], ...] | None = None

    def __post_init__(self):
        if self.read and len(self.read) != len(self.canonical):
            raise AssertionError(f"row {self.source}: {len(self.read)} read quirks for {len(self.canonical)} "
                                 f"canonical names")
        if self.write and self.write_as is None and len(self.write) not in (1, len(self.source)):
            raise AssertionError(f"row {self.source}: {len(self.write)} write quirks for {len(self.source)} "
                                 f"stored names; say which writes what with write_as")
        if self.write_as is not None:
            names = [n for t in self.write_as for n in ((t,) if isinstance(t, str) else t)]
            if sorted(names) != sorted(self.source) or len(self.write_as) != len(self.write):
                raise AssertionError(f"row {self.source}: write_as {self.write_as} is not one target per write "
                                     f"quirk covering the stored names once")

    @property
    def targets(self) -> tuple[str | tuple[str, ...], ...]:
        """WRITE keys, one per write quirk: one quirk writes all stored names together (a tuple key when there
        are several), several quirks write one stored name each, or as `write_as` says."""
        if not self.write:
            return ()
        if self.write_as is not None:
            return self.write_as
        if len(self.write) == 1:
            return (self.source[0] if len(self.source) == 1 else self.source,)
        return self.source


def _names(x) -> tuple:
    return () if x is None else (x,) if isinstance(x, str) else tuple(x)


def _quirks(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def row(source, canonical, read: Quirk | tuple = q.same, write: Quirk | tuple = q.same, write_as=None) -> Row:
    """A row: `source`/`canonical` one pattern or a tuple; `read`/`write` one quirk or one per name."""
    canonical = _names(canonical)
    return Row(_names(source), canonical, _quirks(read), _quirks(write), write_as)


def dropped(source: str) -> Row:
    """A stored tensor some exporters save that we ignore (it maps to no canonical name)."""
    return Row((source,))


def _put(table: dict, key, value, what: str) -> None:
    if key in table:
        raise AssertionError(f"{what} {key!r} comes from two rows")
    table[key] = value


def read_table(rows) -> dict:
    out = {}
    for r in rows:
        for name, quirk in zip(r.canonical, r.read):
            _put(out, name, (quirk, *r.source), "canonical name")
    return out


def write_table(rows) -> dict:
    out = {}
    for r in rows:
        for target, quirk in zip(r.targets, r.write):
            _put(out, target, (quirk, *r.canonical), "write target")
    return out


def _without(rows, drop: Callable[[Row], bool]) -> tuple[Row, ...]:
    return tuple(r for r in rows if not drop(r))


def _qkv_out(c):
    return (c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim


# -- HF (transformers GptOssForCausalLM) ------------------------------------------------------------
L = "model.layers.{layer}."
C = "layers.{layer}."           # canonical per-layer prefix
HF_COMMON_SHAPES = {
    "model.embed_tokens.weight": ("float", lambda c: (c.vocab_size, c.hidden_size)),
    L + "input_layernorm.weight": ("float", lambda c: (c.hidden_size,)),
    L + "self_attn.q_proj.weight": ("float", lambda c: (c.num_q_heads * c.head_dim, c.hidden_size)),
    L + "self_attn.q_proj.bias": ("float", lambda c: (c.num_q_heads * c.head_dim,)),
    L + "self_attn.k_proj.weight": ("float", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    L + "self_attn.k_proj.bias": ("float", lambda c: (c.num_kv_heads * c.head_dim,)),
    L + "self_attn.v_proj.weight": ("float", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    L + "self_attn.v_proj.bias": ("float", lambda c: (c.num_kv_heads * c.head_dim,)),
    L + "self_attn.o_proj.weight": ("float", lambda c: (c.hidden_size, c.num_q_heads * c.head_dim)),
    L + "self_attn.o_proj.bias": ("float", lambda c: (c.hidden_size,)),
    L + "self_attn.sinks": ("float", lambda c: (c.num_q_heads,)),
    L + "post_attention_layernorm.weight": ("float", lambda c: (c.hidden_size,)),
    L + "mlp.router.weight": ("float", lambda c: (c.num_experts, c.hidden_size)),
    L + "mlp.router.bias": ("float", lambda c: (c.num_experts,)),
    L + "mlp.experts.gate_up_proj_bias": ("float", lambda c: (c.num_experts, 2 * c.intermediate_size)),
    L + "mlp.experts.down_proj_bias": ("float", lambda c: (c.num_experts, c.hidden_size)),
    "model.norm.weight": ("float", lambda c: (c.hidden_size,)),
    "lm_head.weight": ("float", lambda c: (c.vocab_size, c.hidden_size)),
}
HF_BF16_EXPERT_SHAPES = {
    L + "mlp.experts.gate_up_proj": ("float", lambda c: (c.num_experts, c.hidden_size, 2 * c.intermediate_size)),
    L + "mlp.experts.down_proj": ("float", lambda c: (c.num_experts, c.intermediate_size, c.hidden_size)),
}
HF_MXFP4_EXPERT_SHAPES = {
    L + "mlp.experts.gate_up_proj_blocks": ("u8", lambda c: (c.num_experts, 2 * c.intermediate_size,
                                                              c.hidden_size // 32, 16)),
    L + "mlp.experts.gate_up_proj_scales": ("u8", lambda c: (c.num_experts, 2 * c.intermediate_size,
                                                              c.hidden_size // 32)),
    L + "mlp.experts.down_proj_blocks": ("u8", lambda c: (c.num_experts, c.hidden_size, c.intermediate_size // 32, 16)),
    L + "mlp.experts.down_proj_scales": ("u8", lambda c: (c.num_experts, c.hidden_size, c.intermediate_size // 32)),
}
# Rows in the stored file's order (WRITE follows it: each layer's tensors land together in shards).
HF_COMMON_ROWS = (
    row("model.embed_tokens.weight", "embed.weight"),
    row(L + "input_layernorm.weight", C + "attn_norm.scale"),
    row((L + "self_attn.q_proj.weight", L + "self_attn.k_proj.weight", L + "self_attn.v_proj.weight"),
        C + "attn.qkv.weight", q.merge_qkv, (q.q_of_qkv, q.k_of_qkv, q.v_of_qkv)),
    row((L + "self_attn.q_proj.bias", L + "self_attn.k_proj.bias", L + "self_attn.v_proj.bias"),
        C + "attn.qkv.bias", q.merge_qkv, (q.q_of_qkv, q.k_of_qkv, q.v_of_qkv)),
    row(L + "self_attn.o_proj.weight", C + "attn.out.weight", q.same, q.plain),
    row(L + "self_attn.o_proj.bias", C + "attn.out.bias"),
    row(L + "self_attn.sinks", C + "attn.sinks"),
    row(L + "post_attention_layernorm.weight", C + "mlp_norm.scale"),
    row(L + "mlp.router.weight", C + "moe.router.weight"),
    row(L + "mlp.router.bias", C + "moe.router.bias"),
    row(L + "mlp.experts.gate_up_proj_bias", (C + "moe.gate.bias", C + "moe.up.bias"),
        (q.even_last, q.odd_last), q.interleave_last),
    row(L + "mlp.experts.down_proj_bias", C + "moe.down.bias"),
    row("model.norm.weight", "norm.scale"),
    row("lm_head.weight", "lm_head.weight"),
)
HF_BF16_EXPERT_ROWS = (
    row(L + "mlp.experts.gate_up_proj", (C + "moe.gate.weight", C + "moe.up.weight"),
        (q.gate_from_hf, q.up_from_hf), q.hf_gate_up),
    row(L + "mlp.experts.down_proj", C + "moe.down.weight", q.down_from_hf, q.hf_down),
)
HF_MXFP4_EXPERT_ROWS = (
    row((L + "mlp.experts.gate_up_proj_blocks", L + "mlp.experts.gate_up_proj_scales"),
        (C + "moe.gate.weight", C + "moe.up.weight"), (q.mxfp4_gate, q.mxfp4_up), q.packed_gate_up),
    row((L + "mlp.experts.down_proj_blocks", L + "mlp.experts.down_proj_scales"), C + "moe.down.weight",
        q.mxfp4_pair, q.packed_pair),
)
# Non-persistent RoPE buffers that some exporters save anyway; recomputed from the config.
HF_DROPPED_ROWS = (
    dropped("model.rotary_emb.inv_freq"),
    dropped(L + "self_attn.rotary_emb.inv_freq"),
)

# -- HF layout of the dense variant (model_type "gpt_oss_dense", e.g. 20b-dense) ----------------------
# Everything but the MLP is gpt-oss's HF layout. The MLP is stored as one HF gpt-oss expert with the expert
# dim dropped: `mlp.experts.gate_up_proj[e]` [H, 2I] (x @ W, gate/up interleaved on the last dim) becomes
# `mlp.gate_up_proj`, and likewise its bias and down_proj; there is no router. So the gpt-oss quirks stay
# the same ones, and a one-expert gpt-oss checkpoint (top-1: its routing weight is softmax over one
# logit = 1) is this layout after taking expert 0 and dropping the router.
D = L + "mlp."
_MOE_ONLY = ("mlp.router.", "mlp.experts.", ".moe.")
HF_DENSE_COMMON_SHAPES = {k: v for k, v in HF_COMMON_SHAPES.items() if not any(m in k for m in _MOE_ONLY)}
HF_DENSE_COMMON_ROWS = _without(HF_COMMON_ROWS, lambda r: any(m in n for n in r.source + r.canonical
                                                              for m in _MOE_ONLY))
HF_DENSE_MLP_SHAPES = {
    D + "gate_up_proj": ("float", lambda c: (c.hidden_size, 2 * c.intermediate_size)),
    D + "gate_up_proj_bias": ("float", lambda c: (2 * c.intermediate_size,)),
    D + "down_proj": ("float", lambda c: (c.intermediate_size, c.hidden_size)),
    D + "down_proj_bias": ("float", lambda c: (c.hidden_size,)),
}
HF_DENSE_MLP_ROWS = (
    row(D + "gate_up_proj", (C + "mlp.gate.weight", C + "mlp.up.weight"),
        (q.dense_gate_from_hf, q.dense_up_from_hf), q.hf_dense_gate_up),
    row(D + "gate_up_proj_bias", (C + "mlp.gate.bias", C + "mlp.up.bias"),
        (q.dense_gate_bias, q.dense_up_bias), q.hf_dense_gate_up_bias),
    row(D + "down_proj", C + "mlp.down.weight", q.dense_down_from_hf, q.hf_dense_down),
    row(D + "down_proj_bias", C + "mlp.down.bias"),
)

# -- OpenAI original (gpt_oss/torch/weights.py and model.py) ---------------------------------------
B = "block.{layer}."

OPENAI_SHAPES = {
    "embedding.weight": ("float", lambda c: (c.vocab_size, c.hidden_size)),
    B + "attn.norm.scale": ("float", lambda c: (c.hidden_size,)),
    B + "attn.qkv.weight": ("float", lambda c: (_qkv_out(c), c.hidden_size)),
    B + "attn.qkv.bias": ("float", lambda c: (_qkv_out(c),)),
    B + "attn.sinks": ("float", lambda c: (c.num_q_heads,)),
    B + "attn.out.weight": ("float", lambda c: (c.hidden_size, c.num_q_heads * c.head_dim)),
    B + "attn.out.bias": ("float", lambda c: (c.hidden_size,)),
    B + "mlp.norm.scale": ("float", lambda c: (c.hidden_size,)),
    B + "mlp.gate.weight": ("float", lambda c: (c.num_experts, c.hidden_size)),
    B + "mlp.gate.bias": ("float", lambda c: (c.num_experts,)),
    B + "mlp.mlp1_weight.blocks": ("u8", lambda c: (c.num_experts, 2 * c.intermediate_size, c.hidden_size // 32, 16)),
    B + "mlp.mlp1_weight.scales": ("u8", lambda c: (c.num_experts, 2 * c.intermediate_size, c.hidden_size // 32)),
    B + "mlp.mlp1_bias": ("float", lambda c: (c.num_experts, 2 * c.intermediate_size)),
    B + "mlp.mlp2_weight.blocks": ("u8", lambda c: (c.num_experts, c.hidden_size, c.intermediate_size // 32, 16)),
    B + "mlp.mlp2_weight.scales": ("u8", lambda c: (c.num_experts, c.hidden_size, c.intermediate_size // 32)),
    B + "mlp.mlp2_bias": ("float", lambda c: (c.num_experts, c.hidden_size)),
    "norm.scale": ("float", lambda c: (c.hidden_size,)),
    "unembedding.weight": ("float", lambda c: (c.vocab_size, c.hidden_size)),
}
OPENAI_ROWS = (
    row("embedding.weight", "embed.weight"),
    row(B + "attn.norm.scale", C + "attn_norm.scale"),
    row(B + "attn.qkv.weight", C + "attn.qkv.weight", q.same, q.plain),
    row(B + "attn.qkv.bias", C + "attn.qkv.bias"),
    row(B + "attn.sinks", C + "attn.sinks"),
    row(B + "attn.out.weight", C + "attn.out.weight", q.same, q.plain),
    row(B + "attn.out.bias", C + "attn.out.bias"),
    row(B + "mlp.norm.scale", C + "mlp_norm.scale"),
    row(B + "mlp.gate.weight", C + "moe.router.weight"),
    row(B + "mlp.gate.bias", C + "moe.router.bias"),
    row((B + "mlp.mlp1_weight.blocks", B + "mlp.mlp1_weight.scales"), (C + "moe.gate.weight", C + "moe.up.weight"),
        (q.mxfp4_gate, q.mxfp4_up), q.packed_gate_up),
    row(B + "mlp.mlp1_bias", (C + "moe.gate.bias", C + "moe.up.bias"), (q.even_last, q.odd_last),
        q.interleave_last),
    row((B + "mlp.mlp2_weight.blocks", B + "mlp.mlp2_weight.scales"), C + "moe.down.weight", q.mxfp4_pair,
        q.packed_pair),
    row(B + "mlp.mlp2_bias", C + "moe.down.bias"),
    row("norm.scale", "norm.scale"),
    row("unembedding.weight", "lm_head.weight"),
)


# -- ModelOpt NVFP4 / FP8 (nvidia-modelopt 0.47 export_hf_checkpoint; layouts in quant_quirks.py) ----
X = L + "mlp.experts."
A = L + "self_attn."
HF_NVFP4_EXPERT_SHAPES = {
    X + "gate_up_proj": ("u8", lambda c: (c.num_experts, c.hidden_size // 2, 2 * c.intermediate_size)),
    X + "gate_up_proj_weight_scale": ("f8", lambda c: (c.num_experts, c.hidden_size // 16, 2 * c.intermediate_size)),
    X + "gate_up_proj_weight_scale_2": ("scalar", lambda c: ()),
    X + "down_proj": ("u8", lambda c: (c.num_experts, c.intermediate_size // 2, c.hidden_size)),
    X + "down_proj_weight_scale": ("f8", lambda c: (c.num_experts, c.intermediate_size // 16, c.hidden_size)),
    X + "down_proj_weight_scale_2": ("scalar", lambda c: ()),
}
_NV_GATE_UP = (X + "gate_up_proj", X + "gate_up_proj_weight_scale", X + "gate_up_proj_weight_scale_2")
_NV_DOWN = (X + "down_proj", X + "down_proj_weight_scale", X + "down_proj_weight_scale_2")
HF_NVFP4_EXPERT_ROWS = (
    row(_NV_GATE_UP, (C + "moe.gate.weight", C + "moe.up.weight"), (qq.nvfp4_gate_from_hf, qq.nvfp4_up_from_hf),
        qq.hf_nvfp4_gate_up),
    row(_NV_DOWN, C + "moe.down.weight", qq.nvfp4_down_from_hf, qq.hf_nvfp4_down),
)
EXPERT_INPUT_SCALE_SHAPES = {
    X + "gate_up_proj_input_scale": ("scalar", lambda c: ()),
    X + "down_proj_input_scale": ("scalar", lambda c: ()),
}
EXPERT_INPUT_SCALE_ROWS = (
    row(X + "gate_up_proj_input_scale", (C + "moe.gate.input_scale", C + "moe.up.input_scale"),
        (qq.scale, qq.scale), qq.max_scale),
    row(X + "down_proj_input_scale", C + "moe.down.input_scale", qq.scale, qq.scale),
)
KV_SCALE_SHAPES = {A + "k_proj.k_scale": ("scalar", lambda c: ()), A + "v_proj.v_scale": ("scalar", lambda c: ())}
KV_SCALE_ROWS = (row(A + "k_proj.k_scale", C + "attn.qkv.k_scale", qq.scale, qq.scale),
                 row(A + "v_proj.v_scale", C + "attn.qkv.v_scale", qq.scale, qq.scale))

_HF_ATTN_WEIGHTS = tuple(A + f"{p}_proj.weight" for p in "qkvo")
HF_NO_ATTN_SHAPES = {k: v for k, v in HF_COMMON_SHAPES.items() if k not in _HF_ATTN_WEIGHTS}
HF_NO_ATTN_ROWS = _without(HF_COMMON_ROWS, lambda r: bool(set(r.source) & set(_HF_ATTN_WEIGHTS)))
HF_FP8_ATTN_SHAPES = {
    A + "q_proj.weight": ("f8", lambda c: (c.num_q_heads * c.head_dim, c.hidden_size)),
    A + "k_proj.weight": ("f8", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    A + "v_proj.weight": ("f8", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    A + "o_proj.weight": ("f8", lambda c: (c.hidden_size, c.num_q_heads * c.head_dim)),
    **{A + f"{p}_proj.weight_scale": ("scalar", lambda c: ()) for p in "qkvo"},
}
_FP8_QKV = tuple((A + f"{p}_proj.weight", A + f"{p}_proj.weight_scale") for p in "qkv")
HF_FP8_ATTN_ROWS = (
    # Read takes the three weights then the three scales; each projection is written as its (weight, scale).
    row(tuple(w for w, _ in _FP8_QKV) + tuple(s for _, s in _FP8_QKV), C + "attn.qkv.weight", qq.fp8_merge_qkv,
        (qq.fp8_q_of_qkv, qq.fp8_k_of_qkv, qq.fp8_v_of_qkv), write_as=_FP8_QKV),
    row((A + "o_proj.weight", A + "o_proj.weight_scale"), C + "attn.out.weight", qq.fp8_linear, qq.fp8_weight),
)
HF_FP8_EXPERT_SHAPES = {
    X + "gate_up_proj": ("f8", lambda c: (c.num_experts, c.hidden_size, 2 * c.intermediate_size)),
    X + "gate_up_proj_weight_scale": ("scalar", lambda c: ()),
    X + "down_proj": ("f8", lambda c: (c.num_experts, c.intermediate_size, c.hidden_size)),
    X + "down_proj_weight_scale": ("scalar", lambda c: ()),
}
HF_FP8_EXPERT_ROWS = (
    row((X + "gate_up_proj", X + "gate_up_proj_weight_scale"), (C + "moe.gate.weight", C + "moe.up.weight"),
        (qq.fp8_gate_from_hf, qq.fp8_up_from_hf), qq.hf_fp8_gate_up),
    row((X + "down_proj", X + "down_proj_weight_scale"), C + "moe.down.weight", qq.fp8_down_from_hf, qq.hf_fp8_down),
)
ATTN_INPUT_SCALE_SHAPES = {A + f"{p}_proj.input_scale": ("scalar", lambda c: ()) for p in "qkvo"}
ATTN_INPUT_SCALE_ROWS = (
    row(tuple(A + f"{p}_proj.input_scale" for p in "qkv"), C + "attn.qkv.input_scale", qq.max_scale,
        (qq.scale, qq.scale, qq.scale)),
    row(A + "o_proj.input_scale", C + "attn.out.input_scale", qq.scale, qq.scale),
)


class _Rows:
    """READ, WRITE and DROPPED of a format or part, derived from its rows."""
    rows: tuple[Row, ...]

    @property
    def read(self) -> dict:
        return read_table(self.rows)

    @property
    def write(self) -> dict:
        return write_table(self.rows)

    @property
    def dropped(self) -> dict:
        return {r.source[0]: None for r in self.rows if not r.canonical}


@dataclass(frozen=True)
class Part(_Rows):
    shapes: dict
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Format(_Rows):
    name: str
    shapes: dict
    rows: tuple[Row, ...]
    features: dict[str, Part] = None     # optional parts (see the module docstring)


def with_row(table: Format | Part, name: str, **changes) -> Format | Part:
    """`table` with its one row that names `name` (a stored or canonical pattern) changed, for negative
    controls that need a broken table: e.g. write=a quirk with gate and up swapped, or read=() / write=()
    for a table that no longer reads / writes that row. Everything else stays as declared."""
    hits = [i for i, r in enumerate(table.rows) if name in r.source or name in r.canonical]
    if len(hits) != 1:
        raise KeyError(f"{name!r} is in {len(hits)} rows of {getattr(table, 'name', 'this part')}, not one")
    rows = list(table.rows)
    rows[hits[0]] = dataclasses.replace(rows[hits[0]], **{k: _quirks(v) if k in ("read", "write") else v
                                                          for k, v in changes.items()})
    return dataclasses.replace(table, rows=tuple(rows))


FORMATS: dict[str, Format] = {
    "hf": Format("hf", {**HF_COMMON_SHAPES, **HF_BF16_EXPERT_SHAPES},
                 HF_COMMON_ROWS + HF_BF16_EXPERT_ROWS + HF_DROPPED_ROWS),
    "hf-mxfp4": Format("hf-mxfp4", {**HF_COMMON_SHAPES, **HF_MXFP4_EXPERT_SHAPES},
                       HF_COMMON_ROWS + HF_MXFP4_EXPERT_ROWS + HF_DROPPED_ROWS),
    "openai": Format("openai", OPENAI_SHAPES, OPENAI_ROWS),
    "hf-nvfp4": Format("hf-nvfp4", {**HF_COMMON_SHAPES, **HF_NVFP4_EXPERT_SHAPES},
                       HF_COMMON_ROWS + HF_NVFP4_EXPERT_ROWS + HF_DROPPED_ROWS,
                       {"input_scales": Part(EXPERT_INPUT_SCALE_SHAPES, EXPERT_INPUT_SCALE_ROWS),
                        "kv_scales": Part(KV_SCALE_SHAPES, KV_SCALE_ROWS)}),
    "hf-fp8": Format("hf-fp8", {**HF_NO_ATTN_SHAPES, **HF_FP8_ATTN_SHAPES, **HF_FP8_EXPERT_SHAPES},
                     HF_NO_ATTN_ROWS + HF_FP8_ATTN_ROWS + HF_FP8_EXPERT_ROWS + HF_DROPPED_ROWS,
                     {"input_scales": Part({**ATTN_INPUT_SCALE_SHAPES, **EXPERT_INPUT_SCALE_SHAPES},
                                           ATTN_INPUT_SCALE_ROWS + EXPERT_INPUT_SCALE_ROWS),
                      "kv_scales": Part(KV_SCALE_SHAPES, KV_SCALE_ROWS)}),
}
# FP8 dense MLP: the FP8 expert layout with the expert dim dropped, like the bf16 one above.
HF_FP8_DENSE_MLP_SHAPES = {
    D + "gate_up_proj": ("f8", lambda c: (c.hidden_size, 2 * c.intermediate_size)),
    D + "gate_up_proj_weight_scale": ("scalar", lambda c: ()),
    D + "gate_up_proj_bias": ("float", lambda c: (2 * c.intermediate_size,)),
    D + "down_proj": ("f8", lambda c: (c.intermediate_size, c.hidden_size)),
    D + "down_proj_weight_scale": ("scalar", lambda c: ()),
    D + "down_proj_bias": ("float", lambda c: (c.hidden_size,)),
}
_FP8_GATE_UP = (D + "gate_up_proj", D + "gate_up_proj_weight_scale")
_FP8_DOWN = (D + "down_proj", D + "down_proj_weight_scale")
HF_FP8_DENSE_MLP_ROWS = (
    *(r for r in HF_DENSE_MLP_ROWS if all(n.endswith(".bias") for n in r.canonical)),
    row(_FP8_GATE_UP, (C + "mlp.gate.weight", C + "mlp.up.weight"),
        (qq.fp8_dense_gate_from_hf, qq.fp8_dense_up_from_hf), qq.hf_fp8_dense_gate_up),
    row(_FP8_DOWN, C + "mlp.down.weight", qq.fp8_dense_down_from_hf, qq.hf_fp8_dense_down),
)
DENSE_INPUT_SCALE_SHAPES = {D + "gate_up_proj_input_scale": ("scalar", lambda c: ()),
                            D + "down_proj_input_scale": ("scalar", lambda c: ())}
DENSE_INPUT_SCALE_ROWS = (
    row(D + "gate_up_proj_input_scale", (C + "mlp.gate.input_scale", C + "mlp.up.input_scale"),
        (qq.scale, qq.scale), qq.max_scale),
    row(D + "down_proj_input_scale", C + "mlp.down.input_scale", qq.scale, qq.scale),
)
_HF_DENSE_NO_ATTN_SHAPES = {k: v for k, v in HF_DENSE_COMMON_SHAPES.items() if k not in _HF_ATTN_WEIGHTS}
_HF_DENSE_NO_ATTN_ROWS = _without(HF_DENSE_COMMON_ROWS, lambda r: bool(set(r.source) & set(_HF_ATTN_WEIGHTS)))

# Layouts of the dense variant, by the same format names: unquantized HF, and FP8 (every linear but
# embeddings and lm_head, as for the MoE). gpt-oss's MXFP4 and OpenAI formats and ModelOpt's NVFP4 gpt-oss
# export quantize experts only, so they have no dense counterpart to follow.
DENSE_FORMATS: dict[str, Format] = {
    "hf": Format("hf", {**HF_DENSE_COMMON_SHAPES, **HF_DENSE_MLP_SHAPES},
                 HF_DENSE_COMMON_ROWS + HF_DENSE_MLP_ROWS + HF_DROPPED_ROWS),
    "hf-fp8": Format("hf-fp8", {**_HF_DENSE_NO_ATTN_SHAPES, **HF_FP8_ATTN_SHAPES, **HF_FP8_DENSE_MLP_SHAPES},
                     _HF_DENSE_NO_ATTN_ROWS + HF_FP8_ATTN_ROWS + HF_FP8_DENSE_MLP_ROWS + HF_DROPPED_ROWS,
                     {"input_scales": Part({**ATTN_INPUT_SCALE_SHAPES, **DENSE_INPUT_SCALE_SHAPES},
                                           ATTN_INPUT_SCALE_ROWS + DENSE_INPUT_SCALE_ROWS),
                      "kv_scales": Part(KV_SCALE_SHAPES, KV_SCALE_ROWS)}),
}
# Which part of a layout its quant config switches on: ModelOpt's quant_algo / kv_cache_quant_algo.
FEATURES = ("input_scales", "kv_scales")
TARGETS = tuple(FORMATS)
