"""Config flags that change the architecture are honoured end to end or refused by name: attention_bias,
layer_types (any per-layer sliding/full pattern), learned sinks. Oracle: transformers' GptOssForCausalLM in fp32
with the same flag (parity: max |ours - theirs| / max |theirs| < 1e-5)."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch

from builder.fit import plan
from checkpoint.config_io import hf_config_dict, openai_config_dict, read_model_config
from checkpoint.convert import convert_checkpoint, load_canonical
from checkpoint.errors import CheckpointError
from runtime import Runtime
from spec.canonical import canonical_shapes
from spec.network import network_from_config
from spec.registry import MODELS, get_model
from spec.registry.models import FULL_ATTENTION, SLIDING_ATTENTION, ModelConfig
from tests.support.runtime import ROOT, hf_config, randomize_, rel_diff

TOL = 1e-5
BASE = ModelConfig(name="variant", num_layers=3, hidden_size=64, head_dim=16, num_q_heads=4, num_kv_heads=2,
                   vocab_size=256, mlp="moe", intermediate_size=32, num_experts=4, experts_per_token=2,
                   sliding_window=5, rope_scaling_factor=8.0, rope_original_max_position=256,
                   max_position_embeddings=2048)
NO_BIAS = BASE.with_overrides(attention_bias=False)
# Full, sliding, sliding: not gpt-oss's alternation (sliding, full, sliding).
PATTERN = BASE.with_overrides(attention_layers=(FULL_ATTENTION, SLIDING_ATTENTION, SLIDING_ATTENTION))


@functools.cache
def hf_model(c: ModelConfig, sinks: float | None = None):
    """(transformers model in fp32 with c's attention_bias and layer_types, its saved folder)."""
    from transformers import GptOssForCausalLM
    torch.manual_seed(0)
    hc = hf_config(c)
    hc.attention_bias = c.attention_bias
    hc.layer_types = c.layer_types
    model = GptOssForCausalLM(hc)
    randomize_(model, seed=11)
    if sinks is not None:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.fill_(sinks)
    model = model.float().eval()
    out = ROOT / f"variant-{abs(hash((c, sinks)))}"
    model.save_pretrained(out)
    return model, out


def _ids(n, seed=0):
    return torch.randint(0, BASE.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# -- attention_bias ---------------------------------------------------------------------------------------------
def test_no_attention_bias_runs_like_transformers():
    model, folder = hf_model(NO_BIAS)
    assert not any(n.endswith(("q_proj.bias", "o_proj.bias")) for n, _ in model.named_parameters())
    with load_canonical(folder) as ck:
        assert ck.config.attention_bias is False
        assert "layers.0.attn.qkv.bias" not in ck.names() and "layers.0.attn.out.bias" not in ck.names()
    rt = Runtime.from_dir(folder)
    assert rt.network.layers[0].attention.qkv.bias is None and rt.network.layers[0].attention.out.bias is None
    ids = _ids(3 * BASE.sliding_window + 2)
    assert rel_diff(rt.prompt_logits(ids), _hf_logits(model, ids)) < TOL


def test_no_attention_bias_converts_where_the_format_can_say_it(tmp_path):
    _, folder = hf_model(NO_BIAS)
    for to in ("hf", "hf-mxfp4"):
        out = convert_checkpoint(folder, tmp_path / to, to=to, progress=False)
        assert json.loads((out / "config.json").read_text())["attention_bias"] is False
        assert read_model_config(out)[0].attention_bias is False
    with pytest.raises(CheckpointError, match="cannot express {'attention_bias': False}"):
        convert_checkpoint(folder, tmp_path / "oa", to="openai", progress=False)
    assert not (tmp_path / "oa").exists()


def test_config_that_contradicts_the_bias_tensors_is_refused(tmp_path):
    """Negative control: flip the flag without the tensors, either way round."""
    import shutil
    for c, flipped in ((NO_BIAS, True), (BASE, False)):
        folder = tmp_path / f"flip-{flipped}"
        shutil.copytree(hf_model(c)[1], folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["attention_bias"] = flipped
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="missing 12: .*q_proj.bias" if flipped else "unexpected 12: .*bias"):
            load_canonical(folder)


# -- layer_types ------------------------------------------------------------------------------------------------
def test_custom_layer_pattern_runs_like_transformers():
    model, folder = hf_model(PATTERN)
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, 5, 5]
    rt = Runtime.from_dir(folder)
    assert rt.network.layers[0].attention.kind == "full"
    assert [a.attention.kind for a in rt.network.layers] == ["full", "sliding", "sliding"]
    ids = _ids(4 * BASE.sliding_window + 1, seed=2)
    assert rel_diff(rt.prompt_logits(ids), _hf_logits(model, ids)) < TOL
    # Step-by-step decode through the ring buffers of the two sliding layers.
    cache = rt.model.new_cache(1, capacity=2)
    steps = [rt.model.forward(torch.tensor([[t]]), torch.tensor([[i]]), cache, logits="all")[0]
             for i, t in enumerate(ids)]
    assert rel_diff(torch.cat(steps), _hf_logits(model, ids)) < TOL


def test_negative_control_the_default_pattern_gives_other_logits(tmp_path):
    import shutil
    model, folder = hf_model(PATTERN)
    shutil.copytree(folder, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg.pop("layer_types")
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    ids = _ids(4 * BASE.sliding_window + 1, seed=2)
    assert rel_diff(Runtime.from_dir(tmp_path / "c").prompt_logits(ids), _hf_logits(model, ids)) > 1e-3


def test_layer_pattern_round_trips_and_openai_refuses_it(tmp_path):
    _, folder = hf_model(PATTERN)
    cfg = read_model_config(folder)[0]
    assert cfg.attention_layers == PATTERN.attention_layers and cfg.layer_types[0] == FULL_ATTENTION
    out = convert_checkpoint(folder, tmp_path / "hf", to="hf", progress=False)
    assert json.loads((out / "config.json").read_text())["layer_types"] == list(PATTERN.attention_layers)
    with pytest.raises(CheckpointError, match="cannot express {'layer_types'"):
        openai_config_dict(cfg)


def test_the_alternation_spelled_out_is_the_default():
    spelled = BASE.with_overrides(attention_layers=(SLIDING_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION))
    assert spelled == BASE and spelled.attention_layers == () and spelled.alternating_layers
    with pytest.raises(ValueError, match="one of .* per layer"):
        BASE.with_overrides(attention_layers=(FULL_ATTENTION,))


def test_every_consumer_follows_the_one_sliding_rule(monkeypatch):
    """Network, HF config and the planner's KV sizing all follow ModelConfig.layer_is_sliding."""
    c = BASE.with_overrides(name="pattern", attention_layers=(FULL_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION))
    net = network_from_config(c)
    assert [layer.attention.kind == "sliding" for layer in net.layers] == [False, False, True]
    assert hf_config_dict(c, mxfp4=False)["layer_types"] == c.layer_types
    monkeypatch.setitem(MODELS, "pattern", c)
    monkeypatch.setitem(MODELS, "base", BASE.with_overrides(name="base"))
    p, b = plan("pattern", "cpu", max_seq_len=1024), plan("base", "cpu", max_seq_len=1024)
    # Two full layers and one sliding instead of one full and two sliding.
    full = lambda x: x.kv_bytes_per_sequence - x.sliding_kv_bytes_per_sequence  # noqa: E731
    assert full(p) == 2 * full(b) and 2 * p.sliding_kv_bytes_per_sequence == b.sliding_kv_bytes_per_sequence


# -- learned sinks ----------------------------------------------------------------------------------------------
def test_without_learned_sinks_the_runtime_equals_transformers_with_sinks_at_minus_infinity():
    # exp(-1e4 - max) is exactly 0 in fp32: transformers' sink column then contributes nothing.
    model, folder = hf_model(BASE, sinks=-1e4)
    c = dataclasses.replace(read_model_config(folder)[0], learned_sinks=False)
    net = network_from_config(c, "bf16", dtype="float32")
    assert all(layer.attention.sinks is None for layer in net.layers)
    assert "layers.0.attn.sinks" not in canonical_shapes(c)
    ids = _ids(30, seed=4)
    rt = Runtime.from_dir(folder, network=net)
    assert rel_diff(rt.prompt_logits(ids), _hf_logits(model, ids)) < TOL
    # Negative control: the same network over the real (non-minus-infinity) sinks' model.
    other, folder2 = hf_model(BASE)
    assert rel_diff(Runtime.from_dir(folder2, network=net).prompt_logits(ids), _hf_logits(other, ids)) > 1e-3


def test_formats_without_a_sinks_flag_refuse_a_model_without_sinks():
    c = get_model("tiny").with_overrides(learned_sinks=False)
    with pytest.raises(CheckpointError, match="no learned sinks"):
        hf_config_dict(c, mxfp4=False)
    with pytest.raises(CheckpointError, match="cannot express {'learned_sinks': False}"):
        openai_config_dict(c)
