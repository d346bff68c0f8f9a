"""Writes builder/assets/tiny/: the registry's `tiny` model as an HF checkpoint with deterministic random
weights, and a small byte-level BPE tokenizer carrying the Harmony special tokens.

Stand-in until a trained tiny model exists. The weights are made by transformers' own GptOssForCausalLM
(an independent writer of the HF layout) from a fixed seed, with the sinks and every bias set to non-zero
values (transformers initialises some to zero, which would hide a converter that drops them).
Run: .venv/bin/python tools/make_tiny_assets.py
"""

from __future__ import annotations

import glob
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GptOssConfig, GptOssForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from builder.registry.models import get_model  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "builder" / "assets" / "tiny"
SEED = 20251129
# Harmony's special tokens (o200k_harmony names); ids at the top of the tiny vocabulary.
HARMONY_SPECIALS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
TRAINING_TEXT = sorted(glob.glob("/usr/share/common-licenses/*")) + [str(Path(__file__).resolve().parents[1] / "README.md")]


def hf_config(m) -> GptOssConfig:
    return GptOssConfig(
        num_hidden_layers=m.num_layers, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_attention_heads=m.num_q_heads, num_key_value_heads=m.num_kv_heads, head_dim=m.head_dim,
        num_local_experts=m.num_experts, num_experts_per_tok=m.experts_per_token, vocab_size=m.vocab_size,
        sliding_window=m.sliding_window, max_position_embeddings=m.max_position_embeddings,
        rope_parameters={"rope_type": "yarn", "factor": m.rope_scaling_factor, "beta_fast": m.rope_beta_fast,
                         "beta_slow": m.rope_beta_slow, "truncate": False, "rope_theta": m.rope_theta,
                         "original_max_position_embeddings": m.rope_original_max_position},
        swiglu_limit=m.swiglu_limit, rms_norm_eps=m.rms_norm_eps, tie_word_embeddings=False,
        eos_token_id=m.vocab_size - 2, pad_token_id=m.vocab_size - 2)   # <|return|>


def make_model(m) -> GptOssForCausalLM:
    torch.manual_seed(SEED)
    model = GptOssForCausalLM(hf_config(m))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.copy_(torch.randn_like(p) * 0.1)
    return model.to(torch.bfloat16)


def make_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(HARMONY_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train(TRAINING_TEXT, trainer)
    tok.add_special_tokens(HARMONY_SPECIALS)
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


def main() -> None:
    m = get_model("tiny")
    with tempfile.TemporaryDirectory(dir=OUT.parent) as tmp:
        make_model(m).save_pretrained(tmp, safe_serialization=True)
        tok = make_tokenizer(m.vocab_size)
        tok.save(str(Path(tmp) / "tokenizer.json"))
        specials = {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|return|>", "pad_token": "<|return|>",
             "harmony_special_tokens": specials}, indent=2) + "\n")
        (Path(tmp) / "generation_config.json").unlink(missing_ok=True)
        for f in Path(tmp).iterdir():
            f.chmod(0o644)
        Path(tmp).chmod(0o755)
        if OUT.exists():
            shutil.rmtree(OUT)
        Path(tmp).rename(OUT)
    print(f"wrote {OUT}: {sorted(p.name for p in OUT.iterdir())}, specials {specials}")


if __name__ == "__main__":
    main()
