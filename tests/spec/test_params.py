"""Parameter counts and checkpoint bytes, computed from configs, against published figures."""

import pytest

from spec.params import active_params, total_params, weight_bytes
from spec.registry import MODELS
from spec.registry.quant_formats import QUANT_FORMATS


@pytest.mark.parametrize("name,total,active", [("120b", 116.8e9, 5.13e9), ("20b", 20.9e9, 3.6e9)])
def test_published_parameter_counts_within_1_percent(name, total, active):
    # OpenAI gpt-oss model card: 120b 116.83B total / 5.13B active; 20b 20.91B / 3.61B.
    assert total_params(MODELS[name]) == pytest.approx(total, rel=0.01)
    assert active_params(MODELS[name]) == pytest.approx(active, rel=0.01)


def test_20b_count_by_hand():
    h, i, e, layers, v = 2880, 2880, 32, 24, 201088
    attn = (h * 4096 + 4096) + 2 * (h * 512 + 512) + (4096 * h + h) + 64
    experts = e * (h * 2 * i + 2 * i + i * h + h)
    per_layer = attn + experts + (e * h + e) + 2 * h
    assert total_params(MODELS["20b"]) == layers * per_layer + 2 * v * h + h


def test_tiny_matches_transformers_parameter_count():
    transformers = pytest.importorskip("transformers")
    m = MODELS["tiny"]
    cfg = transformers.GptOssConfig(
        num_hidden_layers=m.num_layers, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_attention_heads=m.num_q_heads, num_key_value_heads=m.num_kv_heads, head_dim=m.head_dim,
        num_local_experts=m.num_experts, num_experts_per_tok=m.experts_per_token, vocab_size=m.vocab_size,
        sliding_window=m.sliding_window)
    model = transformers.GptOssForCausalLM(cfg)
    assert total_params(m) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,gb", [("120b", 65.2), ("20b", 13.8)])
def test_mxfp4_checkpoint_bytes_match_released_within_3_percent(name, gb):
    # Released HF MXFP4 checkpoints: about 65.2 GB (120b) and 13.8 GB (20b).
    assert sum(weight_bytes(MODELS[name], QUANT_FORMATS["mxfp4"]).values()) == pytest.approx(gb * 1e9, rel=0.03)


def test_dense_20b_is_about_20b_and_all_active_but_embeddings():
    m = MODELS["20b-dense"]
    assert total_params(m) == pytest.approx(20e9, rel=0.05)
    assert active_params(m) == total_params(m) - m.vocab_size * m.hidden_size
