"""Tiny random transformers GptOssForCausalLM checkpoints for the checkpoint/convert tests.

Built once per test session (cached here, not in conftest.py, so several test files share them without
touching the shared fixtures file) and removed at exit. Every parameter is re-drawn non-zero, including
sinks and biases that transformers initialises to zero, and stored in bf16 so OpenAI's reference (which
holds bf16 parameters) sees exactly the same numbers.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

ROOT = Path(tempfile.mkdtemp(prefix="ckpt-tests-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)

# Shapes vary on purpose: hidden != heads * head_dim in "c", a single kv head in "b", odd layer counts.
# original_max_position_embeddings 256 keeps OpenAI's YaRN assertion (0 < low < high < d/2 - 1) true.
CONFIGS = {
    "a": dict(num_hidden_layers=2, hidden_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
              num_local_experts=4, num_experts_per_tok=2, intermediate_size=64, sliding_window=4, vocab_size=256,
              factor=8.0),
    "b": dict(num_hidden_layers=3, hidden_size=128, head_dim=32, num_attention_heads=4, num_key_value_heads=1,
              num_local_experts=8, num_experts_per_tok=4, intermediate_size=96, sliding_window=8, vocab_size=320,
              factor=16.0),
    "c": dict(num_hidden_layers=4, hidden_size=64, head_dim=16, num_attention_heads=8, num_key_value_heads=4,
              num_local_experts=8, num_experts_per_tok=2, intermediate_size=32, sliding_window=6, vocab_size=200,
              factor=4.0),
}
PROMPT_LEN = 20


def hf_config(key: str):
    from transformers import GptOssConfig
    kw = dict(CONFIGS[key])
    factor = kw.pop("factor")
    return GptOssConfig(**kw, max_position_embeddings=int(256 * factor), rms_norm_eps=1e-5,
                        rope_parameters={"rope_type": "yarn", "factor": factor, "beta_fast": 32.0, "beta_slow": 1.0,
                                         "truncate": False, "original_max_position_embeddings": 256,
                                         "rope_theta": 150000.0})


def randomize_(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=g))              # a real sink logit, O(1)
            elif "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                std = 0.3 if "experts" in name else 0.1                  # experts must matter to the logits
                p.copy_(std * torch.randn(p.shape, generator=g))


@functools.cache
def hf_checkpoint(key: str, dtype: str = "bfloat16", shard: bool = False) -> Path:
    """A saved random tiny model: folder with config.json and model.safetensors (or shards + index)."""
    from transformers import GptOssForCausalLM
    torch.manual_seed(0)
    model = GptOssForCausalLM(hf_config(key))
    randomize_(model, seed=sum(map(ord, key)))
    model = model.to(getattr(torch, dtype))
    out = ROOT / f"hf-{key}-{dtype}{'-sharded' if shard else ''}"
    model.save_pretrained(out, max_shard_size="20KB" if shard else "5GB")
    return out


def prompt(key: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIGS[key]["vocab_size"], (1, PROMPT_LEN), generator=g)


def hf_logits(folder: Path, ids: torch.Tensor, mxfp4: bool = False) -> torch.Tensor:
    """fp32 logits of transformers' own load of `folder`."""
    from transformers import GptOssForCausalLM, Mxfp4Config
    kw = {"quantization_config": Mxfp4Config(dequantize=True)} if mxfp4 else {}
    model = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        return model(ids).logits[0]


def load_hf(folder: Path, mxfp4: bool = False):
    from transformers import GptOssForCausalLM, Mxfp4Config
    kw = {"quantization_config": Mxfp4Config(dequantize=True)} if mxfp4 else {}
    return GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()


def reference_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits of OpenAI's gpt-oss torch reference loading an original-format folder."""
    from gpt_oss.torch.model import Transformer
    model = Transformer.from_checkpoint(str(folder), device="cpu").float().eval()
    with torch.no_grad():
        return model(ids[0])
