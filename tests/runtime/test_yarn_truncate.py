"""YaRN `truncate` honoured both ways (gpt-oss ships false; transformers and llama.cpp run true checkpoints, whose
correction range ends are floored/ceiled): read from config.json into ModelConfig.rope_truncate, the frozen Rope
of the network, the reference runtime's frequencies, the ONNX graph's cos/sin tables, the converter's config.json
(written back as read) and the config check TensorRT-LLM's loader runs (spec.network.check_config_matches).
Oracle: transformers (its YaRN init function for inv_freq / attention_factor, GptOssForCausalLM for logits, in
fp32, the parity bound of tests/runtime/test_model_variants.py). Negative control: the same network with the flag
flipped is measurably another RoPE, on a config where floor/ceil moves the ramp (low 0.16 -> 0, high 2.49 -> 3)."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch

from checkpoint.config_io import openai_config_dict, read_model_config
from checkpoint.convert import convert_checkpoint, load_canonical
from checkpoint.errors import CheckpointError
from plugins.onnx.rope import rope_tables
from plugins.reference.rope import rope_frequencies
from runtime import Runtime
from spec.network import NetworkError, check_config_matches
from spec.registry.models import ModelConfig
from tests.support.runtime import ROOT, hf_config, randomize_, rel_diff

TOL = 1e-5
BASE = ModelConfig(name="yarn-truncate", num_layers=2, hidden_size=64, head_dim=16, num_q_heads=4, num_kv_heads=2,
                   vocab_size=256, mlp="moe", intermediate_size=32, num_experts=4, experts_per_token=2,
                   sliding_window=5, rope_scaling_factor=8.0, rope_original_max_position=256,
                   max_position_embeddings=2048)
TRUNCATED = BASE.with_overrides(rope_truncate=True)


@functools.cache
def hf_model(c: ModelConfig):
    """(transformers GptOssForCausalLM in fp32 with c's truncate flag, its saved folder)."""
    from transformers import GptOssForCausalLM
    torch.manual_seed(0)
    model = GptOssForCausalLM(hf_config(c))
    randomize_(model, seed=7)
    model = model.float().eval()
    out = ROOT / f"yarn-truncate-{c.rope_truncate}"
    model.save_pretrained(out)
    return model, out


def _ids(n=40):
    return torch.randint(0, BASE.vocab_size, (n,), generator=torch.Generator().manual_seed(3)).tolist()


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _flipped(network):
    layers = [dataclasses.replace(layer, attention=dataclasses.replace(
        layer.attention, rope=dataclasses.replace(layer.attention.rope, truncate=not layer.attention.rope.truncate)))
        for layer in network.layers]
    return dataclasses.replace(network, layers=layers)


@pytest.mark.parametrize("c", [BASE, TRUNCATED], ids=["false", "true"])
def test_config_to_network_and_frequencies_match_transformers(c):
    model, folder = hf_model(c)
    assert json.loads((folder / "config.json").read_text())["rope_parameters"]["truncate"] is c.rope_truncate
    config, _, _ = read_model_config(folder)
    assert config.rope_truncate is c.rope_truncate
    rope = Runtime.from_dir(folder).network.layers[0].attention.rope
    assert rope.kind == "yarn" and rope.truncate is c.rope_truncate
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    inv_ref, factor_ref = ROPE_INIT_FUNCTIONS["yarn"](model.config, "cpu")
    inv, concentration = rope_frequencies(rope)
    torch.testing.assert_close(inv, inv_ref.float(), rtol=1e-6, atol=0)
    assert concentration == pytest.approx(factor_ref)
    # The ONNX graph's tables are transformers' cos/sin (its rotary embedding, attention factor applied).
    pos = torch.arange(64)[None]
    cos_ref, sin_ref = model.model.rotary_emb(torch.zeros(1, 64, c.hidden_size), pos)
    cos, sin = rope_tables(rope, 64)
    half = c.head_dim // 2
    torch.testing.assert_close(cos[:, :half], cos_ref[0, :, :half], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sin[:, half:], sin_ref[0, :, :half], rtol=1e-5, atol=1e-6)
    # Negative control: the other flag is another ramp on this config.
    assert not torch.allclose(rope_frequencies(dataclasses.replace(rope, truncate=not rope.truncate))[0], inv_ref)


@pytest.mark.parametrize("executor", ["reference", "onnxruntime"])
def test_truncated_checkpoint_runs_like_transformers(executor):
    from runtime.executors import load_runtime
    model, folder = hf_model(TRUNCATED)
    ids = _ids()
    ref = _hf_logits(model, ids)
    rt = load_runtime(folder, executor)
    assert rel_diff(rt.prompt_logits(ids), ref) < TOL
    # Negative control: the same weights with truncate ignored (flipped in the network alone) leave the bound.
    wrong = Runtime.from_dir(folder, network=_flipped(rt.network))
    assert rel_diff(wrong.prompt_logits(ids), ref) > 100 * TOL


def test_converter_writes_truncate_back_and_openai_format_refuses_it(tmp_path):
    _, folder = hf_model(TRUNCATED)
    for to in ("hf", "hf-mxfp4"):
        out = convert_checkpoint(folder, tmp_path / to, to=to, progress=False)
        assert json.loads((out / "config.json").read_text())["rope_parameters"]["truncate"] is True
        assert read_model_config(out)[0].rope_truncate is True
    _, plain = hf_model(BASE)
    out = convert_checkpoint(plain, tmp_path / "plain", to="hf", progress=False)
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["truncate"] is False
    with pytest.raises(CheckpointError, match="cannot express.*rope_truncate"):
        openai_config_dict(TRUNCATED)
    openai_config_dict(BASE)                                   # the untruncated ramp is what that format means


def test_missing_truncate_reads_as_true_like_transformers(tmp_path):
    """transformers' _compute_yarn_parameters reads a missing `truncate` as true; so does the config reader."""
    import shutil
    _, folder = hf_model(BASE)
    edited = tmp_path / "no-truncate"
    shutil.copytree(folder, edited)
    raw = json.loads((edited / "config.json").read_text())
    del raw["rope_parameters"]["truncate"]
    (edited / "config.json").write_text(json.dumps(raw))
    assert read_model_config(edited)[0].rope_truncate is True


def test_config_check_refuses_a_network_that_disagrees_on_truncate():
    """What TensorRT-LLM's loader checks (model_repo.trtllm.llm_kwargs): config.json says true, network.json false."""
    _, folder = hf_model(TRUNCATED)
    with load_canonical(folder) as ck:
        net = Runtime.from_dir(folder).network
        check_config_matches(net, ck.config)
        with pytest.raises(NetworkError, match="rope: network.json says .*'truncate': False.*config.json says "
                                               ".*'truncate': True"):
            check_config_matches(_flipped(net), ck.config)
