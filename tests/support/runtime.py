"""Tiny random gpt-oss models for the runtime tests, saved with transformers (fp32) once per session.

Configs vary on purpose: the registry's `tiny` (window 16, GQA 2:1), an odd window with one kv head and
hidden != heads * head_dim, and plain multi-head attention with a wider head. Every parameter is re-drawn
non-zero, including sinks and biases that transformers initialises to zero, so each quirk moves the logits.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from spec.registry import get_model
from spec.registry.models import ModelConfig

ROOT = Path(tempfile.mkdtemp(prefix="runtime-tests-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)

CONFIGS: dict[str, ModelConfig] = {
    "tiny": get_model("tiny"),
    "odd": ModelConfig(name="odd", num_layers=3, hidden_size=64, head_dim=16, num_q_heads=6, num_kv_heads=1,
                       vocab_size=300, mlp="moe", intermediate_size=32, num_experts=6, experts_per_token=2,
                       sliding_window=5, rope_scaling_factor=8.0, rope_original_max_position=256,
                       max_position_embeddings=2048, eos_token_ids=(7,)),
    "mha": ModelConfig(name="mha", num_layers=2, hidden_size=64, head_dim=32, num_q_heads=4, num_kv_heads=4,
                       vocab_size=200, mlp="moe", intermediate_size=32, num_experts=4, experts_per_token=3,
                       sliding_window=6, rope_scaling_factor=4.0, rope_original_max_position=512,
                       max_position_embeddings=2048),
}


def hf_config(c: ModelConfig):
    from transformers import GptOssConfig
    return GptOssConfig(
        num_hidden_layers=c.num_layers, hidden_size=c.hidden_size, head_dim=c.head_dim,
        num_attention_heads=c.num_q_heads, num_key_value_heads=c.num_kv_heads, vocab_size=c.vocab_size,
        intermediate_size=c.intermediate_size, num_local_experts=c.num_experts,
        num_experts_per_tok=c.experts_per_token, sliding_window=c.sliding_window, swiglu_limit=c.swiglu_limit,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        eos_token_id=list(c.eos_token_ids) or None, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "factor": c.rope_scaling_factor, "beta_fast": c.rope_beta_fast,
                         "beta_slow": c.rope_beta_slow, "truncate": c.rope_truncate, "rope_theta": c.rope_theta,
                         "original_max_position_embeddings": c.rope_original_max_position})


def randomize_(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.3 if "experts" in name else 0.12) * torch.randn(p.shape, generator=g))


@functools.cache
def hf_model(key: str):
    """(transformers GptOssForCausalLM in fp32, eval mode, eager attention; its saved folder)."""
    from transformers import GptOssForCausalLM
    torch.manual_seed(0)
    model = GptOssForCausalLM(hf_config(CONFIGS[key]))
    randomize_(model, seed=sum(map(ord, key)))
    model = model.float().eval()
    out = ROOT / f"hf-{key}"
    model.save_pretrained(out)
    return model, out


@functools.cache
def converted(key: str, to: str) -> Path:
    from checkpoint.convert import convert_checkpoint
    return convert_checkpoint(hf_model(key)[1], ROOT / f"{to}-{key}", to=to, progress=False)


def prompt(key: str, length: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIGS[key].vocab_size, (length,), generator=g).tolist()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the parity measure (fp32 goal: < 1e-5)."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())
