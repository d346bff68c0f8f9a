"""Quantization policy: for a registry format, which canonical tensors are quantized, to what, which of
them share scales, and which activations need calibrated scales.

Everything is read off tables, never off a chain of format names:
- which module groups a format covers: the quant registry (QUANT_FORMATS[f].applies_to) through
  spec.network.resolve_quant, so the policy and the network definition can never disagree;
- which canonical weight belongs to which group: WEIGHT_GROUPS below;
- how a format stores weights: WEIGHT_CODEC, keyed by the registry's checkpoint layout;
- which activation formats need a calibrated static scale, and the scale formula: ACTIVATION_SCALE.

Shared scales, and why (the kernels need them):
- q, k and v are one canonical tensor (attn.qkv) and therefore one quantized value with one global scale
  (NVFP4 weight_scale_2 / FP8 weight_scale) and one input scale: TensorRT-LLM runs them as one fused GEMM.
- gate and up of the experts are two canonical tensors, but HF checkpoints fuse them (gate_up_proj) and
  the MoE kernel runs them as one GEMM: they share one global scale and one input scale (SHARED).
- every expert of a projection shares that projection's global and input scale: an expert projection is
  one canonical [E, out, in] tensor, quantized as one value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spec.canonical import KV_SCALE_SHAPES, input_scale_name
from numerics.fp8 import fp8_kv_scale, fp8_scale
from numerics.nvfp4 import nvfp4_global_scale
from spec.registry.models import ModelConfig
from spec.registry.quant_formats import QUANT_FORMATS, get_quant

# Canonical weight pattern -> module group (spec.network.QUANT_GROUPS).
WEIGHT_GROUPS = {
    "embed.weight": "embed",
    "lm_head.weight": "lm_head",
    "layers.{layer}.attn.qkv.weight": "attention",
    "layers.{layer}.attn.out.weight": "attention",
    "layers.{layer}.moe.router.weight": "router",
    "layers.{layer}.moe.gate.weight": "experts",
    "layers.{layer}.moe.up.weight": "experts",
    "layers.{layer}.moe.down.weight": "experts",
    "layers.{layer}.mlp.gate.weight": "mlp",
    "layers.{layer}.mlp.up.weight": "mlp",
    "layers.{layer}.mlp.down.weight": "mlp",
}

# Weights that share one global scale and one input scale (see the module docstring).
SHARED = (
    ("layers.{layer}.moe.gate.weight", "layers.{layer}.moe.up.weight"),
    ("layers.{layer}.mlp.gate.weight", "layers.{layer}.mlp.up.weight"),
)

# Registry checkpoint layout -> the numerics codec its quantized weights use (None: unquantized).
WEIGHT_CODEC = {"hf": None, "hf-mxfp4": "mxfp4", "hf-nvfp4": "nvfp4", "hf-fp8": "fp8"}

# Activation formats with a static, calibrated per-tensor scale: amax -> input_scale. NVFP4's is the
# global scale of the activation (block scales stay dynamic), amax / (6 * 448); FP8's is amax / 448.
ACTIVATION_SCALE = {"nvfp4": nvfp4_global_scale, "fp8": fp8_scale}


def kv_scale(amax) -> np.float32:
    """FP8 KV-cache scale from the calibrated K (or V) amax: amax / 448, not clamped to 1 -- what
    ModelOpt's HF export writes as k_scale / v_scale (postprocess_state_dict divides amax by 448)."""
    return fp8_kv_scale(amax, clamp_to_one=False)


@dataclass(frozen=True)
class QuantPolicy:
    format: str                       # registry name
    groups: dict[str, str]            # module group -> format ("bf16" = left alone)
    codec: str | None                 # "nvfp4" | "fp8" | "mxfp4" | None
    activations: str | None           # "nvfp4" | "fp8": calibrated static input scales; None: none needed

    @property
    def calibrated(self) -> bool:
        return self.activations is not None

    def quantized_patterns(self) -> tuple[str, ...]:
        """Canonical weight patterns ('layers.{layer}.moe.gate.weight', ...) this format quantizes."""
        return tuple(p for p, g in WEIGHT_GROUPS.items() if self.groups.get(g, "bf16") != "bf16")

    def quantized(self, config: ModelConfig) -> list[str]:
        """The canonical weight names of this model that the format quantizes."""
        from spec.canonical import canonical_shapes
        names = set(canonical_shapes(config))
        return [n for p in self.quantized_patterns() for n in _expand(p, config) if n in names]

    def is_quantized(self, name: str) -> bool:
        return _pattern_of(name) in self.quantized_patterns()

    def shared_with(self, name: str) -> tuple[str, ...]:
        """The weights sharing `name`'s global and input scale (itself included), as concrete names."""
        pattern, layer = _pattern_of(name), _layer_of(name)
        for group in SHARED:
            if pattern in group:
                return tuple(p.format(layer=layer) for p in group)
        return (name,)

    def input_scale_patterns(self) -> tuple[str, ...]:
        """Weight patterns whose linears need a calibrated input scale (all quantized ones, W*A* formats)."""
        return self.quantized_patterns() if self.calibrated else ()

    def input_scale_names(self, config: ModelConfig) -> list[str]:
        return [input_scale_name(n) for n in self.quantized(config)] if self.calibrated else []

    def input_scale(self, amax) -> np.float32:
        if not self.calibrated:
            raise ValueError(f"quant format {self.format!r} quantizes no activations with a static scale")
        return ACTIVATION_SCALE[self.activations](amax)


def _expand(pattern: str, config: ModelConfig) -> list[str]:
    return [pattern.format(layer=i) for i in range(config.num_layers)] if "{layer}" in pattern else [pattern]


def _pattern_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "layers" and parts[1].isdigit():
        parts[1] = "{layer}"
    return ".".join(parts)


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "layers" and parts[1].isdigit() else None


def policy(fmt: str) -> QuantPolicy:
    """The policy of registry format `fmt` ("bf16", "fp8", "mxfp4", "nvfp4", ...)."""
    from spec.network import resolve_quant
    q = get_quant(fmt)
    return QuantPolicy(fmt, resolve_quant(fmt), WEIGHT_CODEC.get(q.checkpoint),
                       q.activations if q.activations in ACTIVATION_SCALE else None)


def format_for_checkpoint(layout: str, calibrated: bool) -> str:
    """The registry format a checkpoint layout holds, given whether its activation scales are calibrated:
    ('hf-nvfp4', True) -> 'nvfp4' (W4A4), ('hf-nvfp4', False) -> the weight-only NVFP4 format, ..."""
    hits = [name for name, q in QUANT_FORMATS.items() if q.checkpoint == layout
            and (q.activations in ACTIVATION_SCALE) == calibrated
            and q.activations in (*ACTIVATION_SCALE, "bf16")]
    if not hits:
        kinds = "calibrated activation scales" if calibrated else "weight-only"
        raise ValueError(f"no quant format stores {layout!r} checkpoints {kinds}")
    return hits[0]


def kv_scale_names(config: ModelConfig) -> list[str]:
    return [p.format(layer=i) for i in range(config.num_layers) for p in KV_SCALE_SHAPES]
