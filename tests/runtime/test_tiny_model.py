"""The shipped tiny model (builder/assets/tiny, trained by tools/train_tiny.py): the registry's `tiny` config, at
most 10 MB, every gpt-oss feature trained (non-zero sinks and biases), held-out perplexity, recognisable
English, and transformers and the reference runtime agreeing on its logits."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from checkpoint.config_io import model_config_from_hf, read_model_config
from checkpoint.convert import load_canonical
from spec.params import total_params
from spec.registry.models import get_model
from tests.support import TINY_ASSETS

ASSETS = TINY_ASSETS
HARMONY_SPECIALS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
# Held-out perplexity of the shipped model on the first PPL_WINDOWS non-overlapping CONTEXT-token windows of
# heldout.txt (a quarter of it, to stay fast), reference runtime: 83.08 in fp32 and in bf16 (the whole file
# scores 77.1, tools/train_tiny.log). The bound leaves 1.7% for other numerics, and catches the network losing a
# gpt-oss feature on this model: without the learned sinks it scores 85.7, without YaRN 99.9, without the
# sliding window 171; untrained, about 4000.
CONTEXT = 256
PPL_WINDOWS = 32
PPL_MEASURED = 83.08
PPL_BOUND = 84.5
MAX_WEIGHT_BYTES = 10 * 10**6


@pytest.fixture(scope="module")
def tiny_rt():
    from runtime import Runtime
    return Runtime.from_dir(ASSETS)


@pytest.fixture(scope="module")
def heldout_ids(tiny_rt):
    return tiny_rt.encode((ASSETS / "heldout.txt").read_text())


def _arch(c):
    return {k: v for k, v in dataclasses.asdict(c).items() if k not in ("name", "source", "notes", "hf_repo")}


def test_shipped_config_is_the_registry_entry():
    raw = json.loads((ASSETS / "config.json").read_text())
    assert _arch(model_config_from_hf(raw, "tiny", ASSETS / "config.json")) == _arch(get_model("tiny"))
    config, kind, _ = read_model_config(ASSETS)
    assert kind == "hf" and config == get_model("tiny")
    m = get_model("tiny")
    # Every feature switched on, at the shapes MXFP4 needs.
    assert m.num_layers >= 4 and m.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert m.learned_sinks and m.attention_bias and not m.tie_word_embeddings and m.is_moe
    assert m.rope_scaling_factor > 1 and m.rope_original_max_position < m.max_position_embeddings
    assert m.hidden_size % 32 == 0 and m.intermediate_size % 32 == 0 and m.head_dim in (32, 64)
    assert m.sliding_window < CONTEXT and raw["rope_parameters"]["truncate"] is False


def test_fits_in_10_mb_of_bf16():
    m = get_model("tiny")
    assert 2 * total_params(m) <= MAX_WEIGHT_BYTES
    assert (ASSETS / "model.safetensors").stat().st_size <= MAX_WEIGHT_BYTES
    with load_canonical(ASSETS) as ck:
        assert {ck.dtype(n) for n in ck.names()} == {torch.bfloat16}
        assert sum(math.prod(ck.shape(n)) for n in ck.names()) == total_params(m)


def test_sinks_and_every_bias_are_trained():
    m = get_model("tiny")
    with load_canonical(ASSETS) as ck:
        for layer in range(m.num_layers):
            for name in ("attn.sinks", "attn.qkv.bias", "attn.out.bias", "moe.router.bias", "moe.gate.bias",
                         "moe.up.bias", "moe.down.bias"):
                t = ck.get(f"layers.{layer}.{name}").float()
                assert t.abs().max() > 1e-2 and (t != 0).float().mean() > 0.5, f"layers.{layer}.{name} untrained"


def test_tokenizer_carries_harmony_specials_and_eos():
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    m = get_model("tiny")
    assert tok.get_vocab_size() == m.vocab_size
    ids = [tok.token_to_id(t) for t in HARMONY_SPECIALS]
    assert ids == list(range(m.vocab_size - len(HARMONY_SPECIALS), m.vocab_size))
    assert m.eos_token_ids == (tok.token_to_id("<|return|>"), tok.token_to_id("<|call|>"))
    cfg = json.loads((ASSETS / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|return|>" and cfg["harmony_special_tokens"] == dict(zip(HARMONY_SPECIALS, ids))
    text = "<|start|>user<|message|>Wherefore art thou Romeo?<|end|>"
    enc = tok.encode(text, add_special_tokens=False).ids
    assert enc[0] == ids[0] and tok.decode(enc, skip_special_tokens=False) == text


def test_heldout_perplexity(tiny_rt, heldout_ids):
    """exp(mean NLL) over non-overlapping CONTEXT-token windows of heldout.txt, all in one batch."""
    n = PPL_WINDOWS
    ids = torch.tensor(heldout_ids[:n * CONTEXT + 1])
    x, y = ids[:-1].view(n, CONTEXT), ids[1:].view(n, CONTEXT)
    model = tiny_rt.model
    logits = model.forward(x, torch.arange(CONTEXT).expand(n, CONTEXT), model.new_cache(n, CONTEXT), logits="all")
    ppl = math.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item())
    assert ppl < PPL_BOUND, f"held-out perplexity {ppl:.2f}, shipped model measured {PPL_MEASURED}"


def test_transformers_and_runtime_agree(tiny_rt, heldout_ids):
    from transformers import GptOssForCausalLM
    ids = heldout_ids[:128]
    hf = GptOssForCausalLM.from_pretrained(str(ASSETS), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    ours = tiny_rt.prompt_logits(ids)
    assert (ours - ref).abs().max().item() < 1e-4
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_greedy_continuations_are_english(tiny_rt):
    """Most words of a greedy continuation are words of the held-out play (not a word salad, not bytes)."""
    from runtime import SamplingParams
    known = set(re.findall(r"[a-z]+", (ASSETS / "heldout.txt").read_text().lower()))
    prompts = ["To be, or not to be,", "The king is dead, and"]
    results = tiny_rt.generate([tiny_rt.encode(p) for p in prompts], SamplingParams(max_tokens=32))
    for prompt, res in zip(prompts, results):
        text = tiny_rt.decode(res.output_ids)
        words = re.findall(r"[a-z]+", text.lower())
        assert len(words) >= 10, (prompt, text)
        assert sum(w in known for w in words) / len(words) >= 0.8, (prompt, text)
