"""Name tables: each checkpoint format's tensors, as data.

Per format:
- SHAPES: every tensor the format stores, `{layer}` patterns -> (kind, shape from the ModelConfig);
  kind "float" (BF16/F16/F32) or "u8" (MXFP4 blocks and e8m0 scales).
- READ: canonical pattern -> (quirk, source pattern, ...): how to build each canonical value.
- DROPPED: source pattern -> None: tensors a format may carry that we deliberately ignore.
- WRITE: target pattern (or a tuple of patterns one quirk writes together) -> (quirk, canonical pattern, ...).
- FEATURES (quantized formats): optional parts of a format, each with its own SHAPES/READ/WRITE:
  "input_scales" (calibrated activation scales, W4A4/W8A8) and "kv_scales" (FP8 KV cache). A checkpoint
  holds a feature's tensors all or none; which it holds is read from its quant config.

Stored kinds: "float" (BF16/F16/F32), "u8" (packed FP4 bytes, e8m0 scales), "f8" (float8_e4m3fn),
"scalar" (a float32 [] scale).

checkpoint.convert.mapping expands them per layer and checks both directions exhaustively: every source
tensor used or dropped, every canonical tensor built once, every target tensor written once.
"""

from __future__ import annotations

from dataclasses import dataclass

from checkpoint.convert import quant_quirks as qq
from checkpoint.convert import quirks as q


def _qkv_out(c):
    return (c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim


# -- HF (transformers GptOssForCausalLM) ------------------------------------------------------------
L = "model.layers.{layer}."

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

HF_COMMON_READ = {
    "embed.weight": (q.same, "model.embed_tokens.weight"),
    "layers.{layer}.attn_norm.scale": (q.same, L + "input_layernorm.weight"),
    "layers.{layer}.attn.qkv.weight": (q.merge_qkv, L + "self_attn.q_proj.weight", L + "self_attn.k_proj.weight",
                                       L + "self_attn.v_proj.weight"),
    "layers.{layer}.attn.qkv.bias": (q.merge_qkv, L + "self_attn.q_proj.bias", L + "self_attn.k_proj.bias",
                                     L + "self_attn.v_proj.bias"),
    "layers.{layer}.attn.sinks": (q.same, L + "self_attn.sinks"),
    "layers.{layer}.attn.out.weight": (q.same, L + "self_attn.o_proj.weight"),
    "layers.{layer}.attn.out.bias": (q.same, L + "self_attn.o_proj.bias"),
    "layers.{layer}.mlp_norm.scale": (q.same, L + "post_attention_layernorm.weight"),
    "layers.{layer}.moe.router.weight": (q.same, L + "mlp.router.weight"),
    "layers.{layer}.moe.router.bias": (q.same, L + "mlp.router.bias"),
    "layers.{layer}.moe.gate.bias": (q.even_last, L + "mlp.experts.gate_up_proj_bias"),
    "layers.{layer}.moe.up.bias": (q.odd_last, L + "mlp.experts.gate_up_proj_bias"),
    "layers.{layer}.moe.down.bias": (q.same, L + "mlp.experts.down_proj_bias"),
    "norm.scale": (q.same, "model.norm.weight"),
    "lm_head.weight": (q.same, "lm_head.weight"),
}
HF_BF16_EXPERT_READ = {
    "layers.{layer}.moe.gate.weight": (q.gate_from_hf, L + "mlp.experts.gate_up_proj"),
    "layers.{layer}.moe.up.weight": (q.up_from_hf, L + "mlp.experts.gate_up_proj"),
    "layers.{layer}.moe.down.weight": (q.down_from_hf, L + "mlp.experts.down_proj"),
}
HF_MXFP4_EXPERT_READ = {
    "layers.{layer}.moe.gate.weight": (q.mxfp4_gate, L + "mlp.experts.gate_up_proj_blocks",
                                       L + "mlp.experts.gate_up_proj_scales"),
    "layers.{layer}.moe.up.weight": (q.mxfp4_up, L + "mlp.experts.gate_up_proj_blocks",
                                     L + "mlp.experts.gate_up_proj_scales"),
    "layers.{layer}.moe.down.weight": (q.mxfp4_pair, L + "mlp.experts.down_proj_blocks",
                                       L + "mlp.experts.down_proj_scales"),
}
# Non-persistent RoPE buffers that some exporters save anyway; recomputed from the config.
HF_DROPPED = {
    "model.rotary_emb.inv_freq": None,
    L + "self_attn.rotary_emb.inv_freq": None,
}

HF_COMMON_WRITE = {
    "model.embed_tokens.weight": (q.same, "embed.weight"),
    L + "input_layernorm.weight": (q.same, "layers.{layer}.attn_norm.scale"),
    L + "self_attn.q_proj.weight": (q.q_of_qkv, "layers.{layer}.attn.qkv.weight"),
    L + "self_attn.k_proj.weight": (q.k_of_qkv, "layers.{layer}.attn.qkv.weight"),
    L + "self_attn.v_proj.weight": (q.v_of_qkv, "layers.{layer}.attn.qkv.weight"),
    L + "self_attn.q_proj.bias": (q.q_of_qkv, "layers.{layer}.attn.qkv.bias"),
    L + "self_attn.k_proj.bias": (q.k_of_qkv, "layers.{layer}.attn.qkv.bias"),
    L + "self_attn.v_proj.bias": (q.v_of_qkv, "layers.{layer}.attn.qkv.bias"),
    L + "self_attn.o_proj.weight": (q.plain, "layers.{layer}.attn.out.weight"),
    L + "self_attn.o_proj.bias": (q.same, "layers.{layer}.attn.out.bias"),
    L + "self_attn.sinks": (q.same, "layers.{layer}.attn.sinks"),
    L + "post_attention_layernorm.weight": (q.same, "layers.{layer}.mlp_norm.scale"),
    L + "mlp.router.weight": (q.same, "layers.{layer}.moe.router.weight"),
    L + "mlp.router.bias": (q.same, "layers.{layer}.moe.router.bias"),
    L + "mlp.experts.gate_up_proj_bias": (q.interleave_last, "layers.{layer}.moe.gate.bias",
                                          "layers.{layer}.moe.up.bias"),
    L + "mlp.experts.down_proj_bias": (q.same, "layers.{layer}.moe.down.bias"),
    "model.norm.weight": (q.same, "norm.scale"),
    "lm_head.weight": (q.same, "lm_head.weight"),
}
HF_BF16_EXPERT_WRITE = {
    L + "mlp.experts.gate_up_proj": (q.hf_gate_up, "layers.{layer}.moe.gate.weight", "layers.{layer}.moe.up.weight"),
    L + "mlp.experts.down_proj": (q.hf_down, "layers.{layer}.moe.down.weight"),
}
HF_MXFP4_EXPERT_WRITE = {
    (L + "mlp.experts.gate_up_proj_blocks", L + "mlp.experts.gate_up_proj_scales"):
        (q.packed_gate_up, "layers.{layer}.moe.gate.weight", "layers.{layer}.moe.up.weight"),
    (L + "mlp.experts.down_proj_blocks", L + "mlp.experts.down_proj_scales"):
        (q.packed_pair, "layers.{layer}.moe.down.weight"),
}

# -- HF layout of the dense variant (model_type "gpt_oss_dense", e.g. 20b-dense) ----------------------
# Everything but the MLP is gpt-oss's HF layout. The MLP is stored as one HF gpt-oss expert with the expert
# dim dropped: `mlp.experts.gate_up_proj[e]` [H, 2I] (x @ W, gate/up interleaved on the last dim) becomes
# `mlp.gate_up_proj`, and likewise its bias and down_proj; there is no router. So the gpt-oss quirks stay
# the same ones, and a one-expert gpt-oss checkpoint (top-1: its routing weight is softmax over one
# logit = 1) is this layout after taking expert 0 and dropping the router.
D = L + "mlp."
_MOE_ONLY = ("mlp.router.", "mlp.experts.", ".moe.")
HF_DENSE_COMMON_SHAPES = {k: v for k, v in HF_COMMON_SHAPES.items() if not any(m in k for m in _MOE_ONLY)}
HF_DENSE_COMMON_READ = {k: v for k, v in HF_COMMON_READ.items() if not any(m in k for m in _MOE_ONLY)}
HF_DENSE_COMMON_WRITE = {k: v for k, v in HF_COMMON_WRITE.items() if not any(m in k for m in _MOE_ONLY)}
HF_DENSE_MLP_SHAPES = {
    D + "gate_up_proj": ("float", lambda c: (c.hidden_size, 2 * c.intermediate_size)),
    D + "gate_up_proj_bias": ("float", lambda c: (2 * c.intermediate_size,)),
    D + "down_proj": ("float", lambda c: (c.intermediate_size, c.hidden_size)),
    D + "down_proj_bias": ("float", lambda c: (c.hidden_size,)),
}
HF_DENSE_MLP_READ = {
    "layers.{layer}.mlp.gate.weight": (q.dense_gate_from_hf, D + "gate_up_proj"),
    "layers.{layer}.mlp.up.weight": (q.dense_up_from_hf, D + "gate_up_proj"),
    "layers.{layer}.mlp.gate.bias": (q.dense_gate_bias, D + "gate_up_proj_bias"),
    "layers.{layer}.mlp.up.bias": (q.dense_up_bias, D + "gate_up_proj_bias"),
    "layers.{layer}.mlp.down.weight": (q.dense_down_from_hf, D + "down_proj"),
    "layers.{layer}.mlp.down.bias": (q.same, D + "down_proj_bias"),
}
HF_DENSE_MLP_WRITE = {
    D + "gate_up_proj": (q.hf_dense_gate_up, "layers.{layer}.mlp.gate.weight", "layers.{layer}.mlp.up.weight"),
    D + "gate_up_proj_bias": (q.hf_dense_gate_up_bias, "layers.{layer}.mlp.gate.bias", "layers.{layer}.mlp.up.bias"),
    D + "down_proj": (q.hf_dense_down, "layers.{layer}.mlp.down.weight"),
    D + "down_proj_bias": (q.same, "layers.{layer}.mlp.down.bias"),
}

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
OPENAI_READ = {
    "embed.weight": (q.same, "embedding.weight"),
    "layers.{layer}.attn_norm.scale": (q.same, B + "attn.norm.scale"),
    "layers.{layer}.attn.qkv.weight": (q.same, B + "attn.qkv.weight"),
    "layers.{layer}.attn.qkv.bias": (q.same, B + "attn.qkv.bias"),
    "layers.{layer}.attn.sinks": (q.same, B + "attn.sinks"),
    "layers.{layer}.attn.out.weight": (q.same, B + "attn.out.weight"),
    "layers.{layer}.attn.out.bias": (q.same, B + "attn.out.bias"),
    "layers.{layer}.mlp_norm.scale": (q.same, B + "mlp.norm.scale"),
    "layers.{layer}.moe.router.weight": (q.same, B + "mlp.gate.weight"),
    "layers.{layer}.moe.router.bias": (q.same, B + "mlp.gate.bias"),
    "layers.{layer}.moe.gate.weight": (q.mxfp4_gate, B + "mlp.mlp1_weight.blocks", B + "mlp.mlp1_weight.scales"),
    "layers.{layer}.moe.up.weight": (q.mxfp4_up, B + "mlp.mlp1_weight.blocks", B + "mlp.mlp1_weight.scales"),
    "layers.{layer}.moe.gate.bias": (q.even_last, B + "mlp.mlp1_bias"),
    "layers.{layer}.moe.up.bias": (q.odd_last, B + "mlp.mlp1_bias"),
    "layers.{layer}.moe.down.weight": (q.mxfp4_pair, B + "mlp.mlp2_weight.blocks", B + "mlp.mlp2_weight.scales"),
    "layers.{layer}.moe.down.bias": (q.same, B + "mlp.mlp2_bias"),
    "norm.scale": (q.same, "norm.scale"),
    "lm_head.weight": (q.same, "unembedding.weight"),
}
OPENAI_WRITE = {
    "embedding.weight": (q.same, "embed.weight"),
    B + "attn.norm.scale": (q.same, "layers.{layer}.attn_norm.scale"),
    B + "attn.qkv.weight": (q.plain, "layers.{layer}.attn.qkv.weight"),
    B + "attn.qkv.bias": (q.same, "layers.{layer}.attn.qkv.bias"),
    B + "attn.sinks": (q.same, "layers.{layer}.attn.sinks"),
    B + "attn.out.weight": (q.plain, "layers.{layer}.attn.out.weight"),
    B + "attn.out.bias": (q.same, "layers.{layer}.attn.out.bias"),
    B + "mlp.norm.scale": (q.same, "layers.{layer}.mlp_norm.scale"),
    B + "mlp.gate.weight": (q.same, "layers.{layer}.moe.router.weight"),
    B + "mlp.gate.bias": (q.same, "layers.{layer}.moe.router.bias"),
    (B + "mlp.mlp1_weight.blocks", B + "mlp.mlp1_weight.scales"):
        (q.packed_gate_up, "layers.{layer}.moe.gate.weight", "layers.{layer}.moe.up.weight"),
    B + "mlp.mlp1_bias": (q.interleave_last, "layers.{layer}.moe.gate.bias", "layers.{layer}.moe.up.bias"),
    (B + "mlp.mlp2_weight.blocks", B + "mlp.mlp2_weight.scales"):
        (q.packed_pair, "layers.{layer}.moe.down.weight"),
    B + "mlp.mlp2_bias": (q.same, "layers.{layer}.moe.down.bias"),
    "norm.scale": (q.same, "norm.scale"),
    "unembedding.weight": (q.same, "lm_head.weight"),
}


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
HF_NVFP4_EXPERT_READ = {
    "layers.{layer}.moe.gate.weight": (qq.nvfp4_gate_from_hf, *_NV_GATE_UP),
    "layers.{layer}.moe.up.weight": (qq.nvfp4_up_from_hf, *_NV_GATE_UP),
    "layers.{layer}.moe.down.weight": (qq.nvfp4_down_from_hf, *_NV_DOWN),
}
HF_NVFP4_EXPERT_WRITE = {
    _NV_GATE_UP: (qq.hf_nvfp4_gate_up, "layers.{layer}.moe.gate.weight", "layers.{layer}.moe.up.weight"),
    _NV_DOWN: (qq.hf_nvfp4_down, "layers.{layer}.moe.down.weight"),
}
EXPERT_INPUT_SCALE_SHAPES = {
    X + "gate_up_proj_input_scale": ("scalar", lambda c: ()),
    X + "down_proj_input_scale": ("scalar", lambda c: ()),
}
EXPERT_INPUT_SCALE_READ = {
    "layers.{layer}.moe.gate.input_scale": (qq.scale, X + "gate_up_proj_input_scale"),
    "layers.{layer}.moe.up.input_scale": (qq.scale, X + "gate_up_proj_input_scale"),
    "layers.{layer}.moe.down.input_scale": (qq.scale, X + "down_proj_input_scale"),
}
EXPERT_INPUT_SCALE_WRITE = {
    X + "gate_up_proj_input_scale": (qq.max_scale, "layers.{layer}.moe.gate.input_scale",
                                     "layers.{layer}.moe.up.input_scale"),
    X + "down_proj_input_scale": (qq.scale, "layers.{layer}.moe.down.input_scale"),
}
KV_SCALE_SHAPES = {A + "k_proj.k_scale": ("scalar", lambda c: ()), A + "v_proj.v_scale": ("scalar", lambda c: ())}
KV_SCALE_READ = {"layers.{layer}.attn.qkv.k_scale": (qq.scale, A + "k_proj.k_scale"),
                 "layers.{layer}.attn.qkv.v_scale": (qq.scale, A + "v_proj.v_scale")}
KV_SCALE_WRITE = {A + "k_proj.k_scale": (qq.scale, "layers.{layer}.attn.qkv.k_scale"),
                  A + "v_proj.v_scale": (qq.scale, "layers.{layer}.attn.qkv.v_scale")}

_HF_ATTN_WEIGHTS = tuple(A + f"{p}_proj.weight" for p in "qkvo")
HF_NO_ATTN_SHAPES = {k: v for k, v in HF_COMMON_SHAPES.items() if k not in _HF_ATTN_WEIGHTS}
HF_NO_ATTN_READ = {k: v for k, v in HF_COMMON_READ.items()
                   if k not in ("layers.{layer}.attn.qkv.weight", "layers.{layer}.attn.out.weight")}
HF_NO_ATTN_WRITE = {k: v for k, v in HF_COMMON_WRITE.items() if k not in _HF_ATTN_WEIGHTS}
HF_FP8_ATTN_SHAPES = {
    A + "q_proj.weight": ("f8", lambda c: (c.num_q_heads * c.head_dim, c.hidden_size)),
    A + "k_proj.weight": ("f8", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    A + "v_proj.weight": ("f8", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    A + "o_proj.weight": ("f8", lambda c: (c.hidden_size, c.num_q_heads * c.head_dim)),
    **{A + f"{p}_proj.weight_scale": ("scalar", lambda c: ()) for p in "qkvo"},
}
HF_FP8_ATTN_READ = {
    "layers.{layer}.attn.qkv.weight": (qq.fp8_merge_qkv, *(A + f"{p}_proj.weight" for p in "qkv"),
                                       *(A + f"{p}_proj.weight_scale" for p in "qkv")),
    "layers.{layer}.attn.out.weight": (qq.fp8_linear, A + "o_proj.weight", A + "o_proj.weight_scale"),
}
HF_FP8_ATTN_WRITE = {
    (A + "q_proj.weight", A + "q_proj.weight_scale"): (qq.fp8_q_of_qkv, "layers.{layer}.attn.qkv.weight"),
    (A + "k_proj.weight", A + "k_proj.weight_scale"): (qq.fp8_k_of_qkv, "layers.{layer}.attn.qkv.weight"),
    (A + "v_proj.weight", A + "v_proj.weight_scale"): (qq.fp8_v_of_qkv, "layers.{layer}.attn.qkv.weight"),
    (A + "o_proj.weight", A + "o_proj.weight_scale"): (qq.fp8_weight, "layers.{layer}.attn.out.weight"),
}
HF_FP8_EXPERT_SHAPES = {
    X + "gate_up_proj": ("f8", lambda c: (c.num_experts, c.hidden_size, 2 * c.intermediate_size)),
    X + "gate_up_proj_weight_scale": ("scalar", lambda c: ()),
    X + "down_proj": ("f8", lambda c: (c.num_experts, c.intermediate_size, c.hidden_size)),
    X + "down_proj_weight_scale": ("scalar", lambda c: ()),
}
HF_FP8_EXPERT_READ = {
    "layers.{layer}.moe.gate.weight": (qq.fp8_gate_from_hf, X + "gate_up_proj", X + "gate_up_proj_weight_scale"),
    "layers.{layer}.moe.up.weight": (qq.fp8_up_from_hf, X + "gate_up_proj", X + "gate_up_proj_weight_scale"),
    "layers.{layer}.moe.down.weight": (qq.fp8_down_from_hf, X + "down_proj", X + "down_proj_weight_scale"),
}
HF_FP8_EXPERT_WRITE = {
    (X + "gate_up_proj", X + "gate_up_proj_weight_scale"):
        (qq.hf_fp8_gate_up, "layers.{layer}.moe.gate.weight", "layers.{layer}.moe.up.weight"),
    (X + "down_proj", X + "down_proj_weight_scale"): (qq.hf_fp8_down, "layers.{layer}.moe.down.weight"),
}
ATTN_INPUT_SCALE_SHAPES = {A + f"{p}_proj.input_scale": ("scalar", lambda c: ()) for p in "qkvo"}
ATTN_INPUT_SCALE_READ = {
    "layers.{layer}.attn.qkv.input_scale": (qq.max_scale, *(A + f"{p}_proj.input_scale" for p in "qkv")),
    "layers.{layer}.attn.out.input_scale": (qq.scale, A + "o_proj.input_scale"),
}
ATTN_INPUT_SCALE_WRITE = {
    **{A + f"{p}_proj.input_scale": (qq.scale, "layers.{layer}.attn.qkv.input_scale") for p in "qkv"},
    A + "o_proj.input_scale": (qq.scale, "layers.{layer}.attn.out.input_scale"),
}


@dataclass(frozen=True)
class Part:
    shapes: dict
    read: dict
    write: dict


@dataclass(frozen=True)
class Format:
    name: str
    shapes: dict
    read: dict
    write: dict
    dropped: dict
    features: dict[str, Part] = None     # optional parts (see the module docstring)


FORMATS: dict[str, Format] = {
    "hf": Format("hf", {**HF_COMMON_SHAPES, **HF_BF16_EXPERT_SHAPES}, {**HF_COMMON_READ, **HF_BF16_EXPERT_READ},
                 {**HF_COMMON_WRITE, **HF_BF16_EXPERT_WRITE}, HF_DROPPED),
    "hf-mxfp4": Format("hf-mxfp4", {**HF_COMMON_SHAPES, **HF_MXFP4_EXPERT_SHAPES},
                       {**HF_COMMON_READ, **HF_MXFP4_EXPERT_READ}, {**HF_COMMON_WRITE, **HF_MXFP4_EXPERT_WRITE},
                       HF_DROPPED),
    "openai": Format("openai", OPENAI_SHAPES, OPENAI_READ, OPENAI_WRITE, {}),
    "hf-nvfp4": Format("hf-nvfp4", {**HF_COMMON_SHAPES, **HF_NVFP4_EXPERT_SHAPES},
                       {**HF_COMMON_READ, **HF_NVFP4_EXPERT_READ}, {**HF_COMMON_WRITE, **HF_NVFP4_EXPERT_WRITE},
                       HF_DROPPED,
                       {"input_scales": Part(EXPERT_INPUT_SCALE_SHAPES, EXPERT_INPUT_SCALE_READ,
                                             EXPERT_INPUT_SCALE_WRITE),
                        "kv_scales": Part(KV_SCALE_SHAPES, KV_SCALE_READ, KV_SCALE_WRITE)}),
    "hf-fp8": Format("hf-fp8", {**HF_NO_ATTN_SHAPES, **HF_FP8_ATTN_SHAPES, **HF_FP8_EXPERT_SHAPES},
                     {**HF_NO_ATTN_READ, **HF_FP8_ATTN_READ, **HF_FP8_EXPERT_READ},
                     {**HF_NO_ATTN_WRITE, **HF_FP8_ATTN_WRITE, **HF_FP8_EXPERT_WRITE}, HF_DROPPED,
                     {"input_scales": Part({**ATTN_INPUT_SCALE_SHAPES, **EXPERT_INPUT_SCALE_SHAPES},
                                           {**ATTN_INPUT_SCALE_READ, **EXPERT_INPUT_SCALE_READ},
                                           {**ATTN_INPUT_SCALE_WRITE, **EXPERT_INPUT_SCALE_WRITE}),
                      "kv_scales": Part(KV_SCALE_SHAPES, KV_SCALE_READ, KV_SCALE_WRITE)}),
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
HF_FP8_DENSE_MLP_READ = {
    **{k: v for k, v in HF_DENSE_MLP_READ.items() if k.endswith(".bias")},
    "layers.{layer}.mlp.gate.weight": (qq.fp8_dense_gate_from_hf, *_FP8_GATE_UP),
    "layers.{layer}.mlp.up.weight": (qq.fp8_dense_up_from_hf, *_FP8_GATE_UP),
    "layers.{layer}.mlp.down.weight": (qq.fp8_dense_down_from_hf, *_FP8_DOWN),
}
HF_FP8_DENSE_MLP_WRITE = {
    **{k: v for k, v in HF_DENSE_MLP_WRITE.items() if k.endswith("_bias")},
    _FP8_GATE_UP: (qq.hf_fp8_dense_gate_up, "layers.{layer}.mlp.gate.weight", "layers.{layer}.mlp.up.weight"),
    _FP8_DOWN: (qq.hf_fp8_dense_down, "layers.{layer}.mlp.down.weight"),
}
DENSE_INPUT_SCALE_SHAPES = {D + "gate_up_proj_input_scale": ("scalar", lambda c: ()),
                            D + "down_proj_input_scale": ("scalar", lambda c: ())}
DENSE_INPUT_SCALE_READ = {
    "layers.{layer}.mlp.gate.input_scale": (qq.scale, D + "gate_up_proj_input_scale"),
    "layers.{layer}.mlp.up.input_scale": (qq.scale, D + "gate_up_proj_input_scale"),
    "layers.{layer}.mlp.down.input_scale": (qq.scale, D + "down_proj_input_scale"),
}
DENSE_INPUT_SCALE_WRITE = {
    D + "gate_up_proj_input_scale": (qq.max_scale, "layers.{layer}.mlp.gate.input_scale",
                                     "layers.{layer}.mlp.up.input_scale"),
    D + "down_proj_input_scale": (qq.scale, "layers.{layer}.mlp.down.input_scale"),
}
_HF_DENSE_NO_ATTN = ({k: v for k, v in HF_DENSE_COMMON_SHAPES.items() if k not in _HF_ATTN_WEIGHTS},
                     {k: v for k, v in HF_DENSE_COMMON_READ.items()
                      if k not in ("layers.{layer}.attn.qkv.weight", "layers.{layer}.attn.out.weight")},
                     {k: v for k, v in HF_DENSE_COMMON_WRITE.items() if k not in _HF_ATTN_WEIGHTS})

# Layouts of the dense variant, by the same format names: unquantized HF, and FP8 (every linear but
# embeddings and lm_head, as for the MoE). gpt-oss's MXFP4 and OpenAI formats and ModelOpt's NVFP4 gpt-oss
# export quantize experts only, so they have no dense counterpart to follow.
DENSE_FORMATS: dict[str, Format] = {
    "hf": Format("hf", {**HF_DENSE_COMMON_SHAPES, **HF_DENSE_MLP_SHAPES}, {**HF_DENSE_COMMON_READ, **HF_DENSE_MLP_READ},
                 {**HF_DENSE_COMMON_WRITE, **HF_DENSE_MLP_WRITE}, HF_DROPPED),
    "hf-fp8": Format("hf-fp8", {**_HF_DENSE_NO_ATTN[0], **HF_FP8_ATTN_SHAPES, **HF_FP8_DENSE_MLP_SHAPES},
                     {**_HF_DENSE_NO_ATTN[1], **HF_FP8_ATTN_READ, **HF_FP8_DENSE_MLP_READ},
                     {**_HF_DENSE_NO_ATTN[2], **HF_FP8_ATTN_WRITE, **HF_FP8_DENSE_MLP_WRITE}, HF_DROPPED,
                     {"input_scales": Part({**ATTN_INPUT_SCALE_SHAPES, **DENSE_INPUT_SCALE_SHAPES},
                                           {**ATTN_INPUT_SCALE_READ, **DENSE_INPUT_SCALE_READ},
                                           {**ATTN_INPUT_SCALE_WRITE, **DENSE_INPUT_SCALE_WRITE}),
                      "kv_scales": Part(KV_SCALE_SHAPES, KV_SCALE_READ, KV_SCALE_WRITE)}),
}
# Which part of a layout its quant config switches on: ModelOpt's quant_algo / kv_cache_quant_algo.
FEATURES = ("input_scales", "kv_scales")
TARGETS = tuple(FORMATS)
