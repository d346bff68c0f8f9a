"""checkpoint.synthetic: a released model's shapes and names (the HF MXFP4 layout the loader detects), read
back through the project's own loader and, independently, through the safetensors library and transformers'
GptOssConfig; values finite and in the stated ranges; sharding as HF ships it."""

from __future__ import annotations

import json

import pytest

from checkpoint.convert import load_canonical
from checkpoint.convert.mapping import expand
from checkpoint.errors import CheckpointError
from checkpoint.synthetic import SCALE_EXPONENTS, synthetic_config, write_synthetic


def test_20b_slice_has_the_released_names_shapes_and_quant_config(tmp_path):
    ckpt = write_synthetic(tmp_path / "c", "20b", layers=1, vocab_size=1024, max_shard_bytes=64 << 20)
    from safetensors import safe_open
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1                                        # sharded, with an index
    seen = {}
    for f in files:
        with safe_open(str(ckpt / f), "pt") as sf:
            for name in sf.keys():
                seen[name] = sf.get_tensor(name)
    want = expand("hf-mxfp4", synthetic_config("20b", 1, 1024)).shapes
    assert {n: tuple(t.shape) for n, t in seen.items()} == {n: tuple(s) for n, (_, s) in want.items()}
    blocks = seen["model.layers.0.mlp.experts.gate_up_proj_blocks"]
    assert tuple(blocks.shape) == (32, 5760, 90, 16) and str(blocks.dtype) == "torch.uint8"
    scales = seen["model.layers.0.mlp.experts.down_proj_scales"]
    assert SCALE_EXPONENTS[0] <= int(scales.min()) and int(scales.max()) < SCALE_EXPONENTS[1]
    q = seen["model.layers.0.self_attn.q_proj.weight"]
    assert str(q.dtype) == "torch.bfloat16" and 0.01 < float(q.float().std()) < 0.03
    assert float(seen["model.layers.0.input_layernorm.weight"].float().min()) == 1.0
    from transformers import GptOssConfig
    cfg = GptOssConfig.from_pretrained(str(ckpt))
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_local_experts) == (1, 2880, 32)
    assert cfg.quantization_config["quant_method"] == "mxfp4"
    with load_canonical(ckpt) as ck:
        assert (ck.format, ck.quant) == ("hf-mxfp4", "mxfp4")
    assert (ckpt / "tokenizer.json").is_file()


def test_bf16_layout_and_bad_arguments(tmp_path):
    ckpt = write_synthetic(tmp_path / "c", "tiny", mxfp4=False, tokenizer=False)
    with load_canonical(ckpt) as ck:
        assert (ck.format, ck.quant) == ("hf", "bf16")
    with pytest.raises(CheckpointError, match="not empty"):
        write_synthetic(ckpt, "tiny")
    with pytest.raises(CheckpointError, match="layers=5"):
        write_synthetic(tmp_path / "d", "tiny", layers=5)
