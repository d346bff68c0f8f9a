"""config.json reading and writing: HF 5.x rope_parameters and 4.x rope_scaling give the same ModelConfig,
OpenAI's original config has exactly its sixteen keys, registry models are recognised by architecture."""

from __future__ import annotations

import dataclasses
import json

import pytest

from checkpoint import CheckpointError, model_config_from_checkpoint
from checkpoint.config_io import (
    OPENAI_KEYS,
    hf_config_dict,
    model_config_from_openai,
    openai_config_dict,
    read_model_config,
)
from checkpoint.convert.mapping import expand
from spec.registry import get_model
from tests.support.checkpoints import hf_checkpoint


def _write(folder, cfg):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _to_4x(cfg: dict) -> dict:
    """The same model as transformers 4.x wrote it: rope_scaling plus a top-level rope_theta."""
    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    cfg.pop("swiglu_alpha")
    return cfg


@pytest.mark.parametrize("model", ["20b", "120b", "tiny"])
def test_hf_5x_and_4x_configs_read_alike_and_match_the_registry(tmp_path, model):
    reg = get_model(model)
    d5 = hf_config_dict(reg, mxfp4=True)
    a = read_model_config(_write(tmp_path / "five", d5))[0]
    b = read_model_config(_write(tmp_path / "four", _to_4x(d5)))[0]
    assert a == b == reg                                   # name taken from the registry, not the folder


def test_transformers_parses_our_hf_config():
    from transformers import GptOssConfig
    d = hf_config_dict(get_model("20b"), mxfp4=False)
    cfg = GptOssConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type", "dtype")})
    assert cfg.rope_parameters["factor"] == 32.0 and cfg.rope_parameters["truncate"] is False
    assert cfg.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert cfg.num_local_experts == 32 and cfg.swiglu_alpha == 1.702


def test_checkpoint_name_is_its_folder_unless_registry():
    cfg = model_config_from_checkpoint(hf_checkpoint("a"))
    assert cfg.name == hf_checkpoint("a").name and cfg.num_layers == 2


def test_openai_config_roundtrip_exact_keys():
    reg = get_model("120b")
    d = openai_config_dict(reg)
    assert tuple(d) == OPENAI_KEYS
    back = model_config_from_openai(d, "x", None)
    assert dataclasses.replace(back, name=reg.name, hf_repo=reg.hf_repo, hf_repo_quant=reg.hf_repo_quant,
                               source=reg.source, notes=reg.notes,
                               eos_token_ids=reg.eos_token_ids) == reg
    assert d["rope_ntk_alpha"] == 1.0 and d["rope_ntk_beta"] == 32.0 and d["initial_context_length"] == 4096


def test_openai_cannot_express_other_alpha():
    with pytest.raises(CheckpointError, match="cannot express {'swiglu_alpha': 1.5}"):
        openai_config_dict(get_model("tiny").with_overrides(swiglu_alpha=1.5))


def test_openai_missing_keys(tmp_path):
    d = openai_config_dict(get_model("tiny"))
    d.pop("sliding_window")
    with pytest.raises(CheckpointError, match=r"missing \['sliding_window'\]"):
        read_model_config(_write(tmp_path / "o", d))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(layer_types=["full_attention"] * 3), "layer_types must list one of"),
    (lambda c: c.update(layer_types=["sliding_attention", "chunked_attention"] * 2), "layer_types must list one of"),
    (lambda c: c.update(model_type="llama"), "model_type 'llama' is not one of"),
    (lambda c: c.update(model_type="gpt_oss_dense"), r"expert keys \['num_local_experts', 'num_experts_per_tok'\]"),
    (lambda c: c["rope_parameters"].update(rope_type="longrope"), "RoPE keys|rope_type 'longrope'"),
    (lambda c: c["rope_parameters"].update(mscale=2.0), r"RoPE keys \['mscale'\]"),
    (lambda c: c.update(sliding_window=None), "sliding_window is null"),
    (lambda c: c.pop("vocab_size"), "'vocab_size' is missing"),
])
def test_hf_config_errors(tmp_path, edit, message):
    d = hf_config_dict(get_model("tiny"), mxfp4=False)
    edit(d)
    with pytest.raises(CheckpointError, match=message):
        read_model_config(_write(tmp_path / "c", d))


def test_plain_rope_4x(tmp_path):
    d = _to_4x(hf_config_dict(get_model("tiny"), mxfp4=False))
    d.pop("rope_scaling")
    cfg = read_model_config(_write(tmp_path / "c", d))[0]
    assert cfg.rope_scaling_factor == 1.0 and cfg.name == "c"


def test_dense_models_have_the_hf_and_fp8_layouts_only():
    assert "model.layers.0.mlp.gate_up_proj" in expand("hf", get_model("20b-dense")).shapes
    assert "model.layers.0.mlp.down_proj_weight_scale" in expand("hf-fp8", get_model("20b-dense")).shapes
    for fmt in ("hf-mxfp4", "openai", "hf-nvfp4"):
        with pytest.raises(CheckpointError, match=f"dense MLP, which the {fmt} layout cannot hold"):
            expand(fmt, get_model("20b-dense"))


def test_mxfp4_formats_need_multiples_of_32():
    odd = get_model("tiny").with_overrides(intermediate_size=48)
    assert expand("hf", odd).shapes["model.layers.0.mlp.experts.down_proj"][1] == (8, 48, 128)
    for fmt in ("hf-mxfp4", "openai"):
        with pytest.raises(CheckpointError, match="intermediate_size=48 is not a multiple of 32"):
            expand(fmt, odd)
