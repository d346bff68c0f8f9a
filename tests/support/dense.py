"""Tiny dense checkpoints and their transformers oracle.

The oracle is transformers' GptOssForCausalLM with ONE expert and top-1 routing: its routing weight is a
softmax over one logit, i.e. exactly 1 whatever the router's weights, so it computes the dense variant's math.
The dense checkpoint is written here by hand from that model's tensors, following the documented layout
(checkpoint/convert/tables.py, HF_DENSE_*: the expert's tensors with the expert dim dropped, no router) and the
config rule (checkpoint/config_io.py: transformers' config with model_type gpt_oss_dense and no expert keys),
so the converter's tables are checked against an independent spelling of the layout.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from spec.registry import get_model
from spec.registry.models import ModelConfig
from tests.support import TINY_ASSETS
from tests.support.runtime import ROOT, hf_config, randomize_

_EXPERT_KEYS = ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "output_router_logits")


def one_expert(c: ModelConfig) -> ModelConfig:
    """The MoE config that computes dense config `c`: one expert, top-1."""
    return c.with_overrides(mlp="moe", num_experts=1, experts_per_token=1)


@functools.cache
def hf_one_expert(c: ModelConfig, seed: int = 0):
    """transformers GptOssForCausalLM (fp32, eval) with one expert and top-1 routing, every parameter random."""
    from transformers import GptOssForCausalLM
    torch.manual_seed(seed)
    hc = hf_config(one_expert(c))
    hc.attention_bias = c.attention_bias
    hc.layer_types = c.layer_types
    model = GptOssForCausalLM(hc)
    randomize_(model, seed=seed + 7)
    return model.float().eval()


def dense_state_dict(model, interleaved: bool = True) -> dict[str, torch.Tensor]:
    """The HF one-expert model's tensors in the dense layout. interleaved=False stores gate_up as [gate | up]
    halves instead (a negative control: what forgetting gpt-oss's interleave looks like)."""
    out = {}
    for name, t in model.state_dict().items():
        if ".mlp.router." in name:
            continue
        if ".mlp.experts." in name:
            t = t[0]
            if "gate_up" in name and not interleaved:
                t = torch.cat([t[..., 0::2], t[..., 1::2]], dim=-1)
            name = name.replace(".mlp.experts.", ".mlp.")
        out[name] = t.detach().contiguous().clone()
    return out


def write_dense_checkpoint(c: ModelConfig, dest: Path, seed: int = 0, interleaved: bool = True,
                           tokenizer: bool = True) -> Path:
    model = hf_one_expert(c, seed)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(dense_state_dict(model, interleaved), str(dest / "model.safetensors"))
    config = model.config.to_dict()
    for key in _EXPERT_KEYS:
        config.pop(key, None)
    config.update(model_type="gpt_oss_dense", architectures=["GptOssDenseForCausalLM"])
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(TINY_ASSETS / f, dest / f)
    return dest


@functools.cache
def tiny_dense_checkpoint() -> Path:
    return write_dense_checkpoint(get_model("tiny-dense"), ROOT / "tiny-dense-ckpt")


def hf_logits(c: ModelConfig, ids, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return hf_one_expert(c, seed)(torch.tensor([list(ids)])).logits[0]
