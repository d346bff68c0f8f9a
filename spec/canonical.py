"""Canonical tensor names: the network definition's parameter names, shared by converter and runtime.

Every checkpoint format maps to and from this one naming (checkpoint/convert). Orientation is always
nn.Linear's [out, in]; gate and up are separate tensors (never interleaved); q/k/v are merged as
q|k|v rows, the way OpenAI's original format stores them. Expert tensors carry a leading [E] dim.

A canonical value is either a torch.Tensor or a packed numerics value (numerics.mxfp4.MXFP4Weight for
MXFP4 experts, kept packed so MXFP4 checkpoints round-trip bit-exactly and never need the memory of a
dequantized copy; numerics NVFP4Tensor / FP8Tensor in quantized checkpoints).
"""

from __future__ import annotations

from spec.registry.models import ModelConfig

GLOBAL_SHAPES = {
    "embed.weight": lambda c: (c.vocab_size, c.hidden_size),
    "norm.scale": lambda c: (c.hidden_size,),
    "lm_head.weight": lambda c: (c.vocab_size, c.hidden_size),
}

ATTENTION_SHAPES = {
    "layers.{layer}.attn_norm.scale": lambda c: (c.hidden_size,),
    "layers.{layer}.attn.qkv.weight": lambda c: (_qkv_rows(c), c.hidden_size),
    "layers.{layer}.attn.qkv.bias": lambda c: (_qkv_rows(c),),
    "layers.{layer}.attn.sinks": lambda c: (c.num_q_heads,),
    "layers.{layer}.attn.out.weight": lambda c: (c.hidden_size, c.num_q_heads * c.head_dim),
    "layers.{layer}.attn.out.bias": lambda c: (c.hidden_size,),
    "layers.{layer}.mlp_norm.scale": lambda c: (c.hidden_size,),
}

MOE_SHAPES = {
    "layers.{layer}.moe.router.weight": lambda c: (c.num_experts, c.hidden_size),
    "layers.{layer}.moe.router.bias": lambda c: (c.num_experts,),
    "layers.{layer}.moe.gate.weight": lambda c: (c.num_experts, c.intermediate_size, c.hidden_size),
    "layers.{layer}.moe.gate.bias": lambda c: (c.num_experts, c.intermediate_size),
    "layers.{layer}.moe.up.weight": lambda c: (c.num_experts, c.intermediate_size, c.hidden_size),
    "layers.{layer}.moe.up.bias": lambda c: (c.num_experts, c.intermediate_size),
    "layers.{layer}.moe.down.weight": lambda c: (c.num_experts, c.hidden_size, c.intermediate_size),
    "layers.{layer}.moe.down.bias": lambda c: (c.num_experts, c.hidden_size),
}

DENSE_MLP_SHAPES = {
    "layers.{layer}.mlp.gate.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "layers.{layer}.mlp.gate.bias": lambda c: (c.intermediate_size,),
    "layers.{layer}.mlp.up.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "layers.{layer}.mlp.up.bias": lambda c: (c.intermediate_size,),
    "layers.{layer}.mlp.down.weight": lambda c: (c.hidden_size, c.intermediate_size),
    "layers.{layer}.mlp.down.bias": lambda c: (c.hidden_size,),
}


# Tensors a model has only when its config says so: the ModelConfig flag each one depends on.
OPTIONAL = {
    "layers.{layer}.attn.qkv.bias": "attention_bias",
    "layers.{layer}.attn.out.bias": "attention_bias",
    "layers.{layer}.attn.sinks": "learned_sinks",
}


def present(pattern: str, config: ModelConfig) -> bool:
    """Whether this model has the canonical tensor `pattern` (OPTIONAL ones depend on a config flag)."""
    flag = OPTIONAL.get(pattern)
    return flag is None or bool(getattr(config, flag))


def _qkv_rows(c: ModelConfig) -> int:
    return (c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim


def canonical_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of a model with its logical (dequantized) shape, in a stable order."""
    per_layer = {p: shape for p, shape in {**ATTENTION_SHAPES, **(MOE_SHAPES if config.is_moe else DENSE_MLP_SHAPES)}
                 .items() if present(p, config)}
    shapes = {"embed.weight": GLOBAL_SHAPES["embed.weight"](config)}
    for layer in range(config.num_layers):
        for pattern, shape in per_layer.items():
            shapes[pattern.format(layer=layer)] = shape(config)
    shapes["norm.scale"] = GLOBAL_SHAPES["norm.scale"](config)
    shapes["lm_head.weight"] = GLOBAL_SHAPES["lm_head.weight"](config)
    return shapes


def split_qkv(config: ModelConfig, qkv):
    """Merged q|k|v rows -> (q, k, v). Works on weights [rows, H] and biases [rows]."""
    q_rows = config.num_q_heads * config.head_dim
    kv_rows = config.num_kv_heads * config.head_dim
    return qkv[:q_rows], qkv[q_rows:q_rows + kv_rows], qkv[q_rows + kv_rows:]


# -- calibrated scales (quantized checkpoints only) ----------------------------------------------------
# A quantized canonical weight is a numerics NVFP4Tensor or FP8Tensor (logical shape as above).
# Formats whose GEMMs quantize activations with a static scale also carry, per quantized linear, its
# calibrated activation scale under `<module>.input_scale` (ModelOpt's export name, a float32 scalar;
# the reference runtime reads exactly these names), and an FP8 KV cache carries each attention layer's
# K and V scales under `<qkv module>.k_scale` / `.v_scale` (ModelOpt: `k_proj.k_scale`, `v_proj.v_scale`).
INPUT_SCALE_SUFFIX = ".input_scale"
KV_SCALE_SHAPES = {
    "layers.{layer}.attn.qkv.k_scale": lambda c: (),
    "layers.{layer}.attn.qkv.v_scale": lambda c: (),
}


def input_scale_name(weight_name: str) -> str:
    """'layers.0.moe.gate.weight' -> 'layers.0.moe.gate.input_scale'."""
    return weight_name.removesuffix(".weight") + INPUT_SCALE_SUFFIX


def scale_shapes(config: ModelConfig, input_scale_patterns=(), kv_scales: bool = False) -> dict[str, tuple]:
    """Shapes (all scalars) of the calibrated scales a quantized checkpoint holds: the input scales of the
    given weight patterns (e.g. 'layers.{layer}.moe.down.weight'), plus the KV scales if kv_scales."""
    patterns = [input_scale_name(p) for p in input_scale_patterns] + (list(KV_SCALE_SHAPES) if kv_scales else [])
    out = {}
    for layer in range(config.num_layers):
        for p in patterns:
            out[p.format(layer=layer)] = ()
    return out
