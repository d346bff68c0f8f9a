"""checkpoint.synthetic: a released model's shapes and names (the HF MXFP4 layout the loader detects), read
back through the project's own loader and, independently, through the safetensors library and transformers'
GptOssConfig; values finite and in the stated ranges (MXFP4 dequantized by transformers' own routine); sharding
as HF ships it; every tensor and expert slice distinct (a plan builder that stores identical weights once must see
a real checkpoint's bytes), with a repeated-stream control; the same bytes for the same seed."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import pytest
import torch

from checkpoint.convert import load_canonical
from checkpoint.convert.mapping import expand
from checkpoint.errors import CheckpointError
import checkpoint.synthetic as synthetic
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
    norm = seen["model.layers.0.input_layernorm.weight"].float()
    assert 0.9 < float(norm.min()) and float(norm.max()) < 1.1 and float(norm.std()) > 0.005
    assert all(bool(torch.isfinite(t.float()).all()) for t in seen.values() if t.dtype == torch.bfloat16)
    assert len(torch.unique(blocks[0, 0] & 15)) == 16 and len(torch.unique(blocks[0, 0] >> 4)) == 16
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    w = convert_moe_packed_tensors(blocks[:2], seen["model.layers.0.mlp.experts.gate_up_proj_scales"][:2])
    assert bool(torch.isfinite(w).all()) and 0.05 < float(w.abs().max()) <= 6 * 2.0 ** -4
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


def _slices(folder):
    """(name, bytes) of every tensor and of every expert's slice of a stacked expert tensor, read by the
    safetensors library."""
    from safetensors import safe_open
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for name in sf.keys():
                t = sf.get_tensor(name).contiguous()
                yield name, t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes()
                if ".experts." in name:
                    for e in range(t.shape[0]):
                        yield f"{name}[{e}]", t[e].contiguous().view(torch.uint8).numpy().tobytes()


def _repeats(folder, block=256):
    """Pairs of equal-sized tensors / expert slices with equal bytes, and aligned blocks repeated anywhere."""
    whole, blocks, repeats = {}, defaultdict(list), []
    for name, data in _slices(folder):
        digest = hashlib.sha256(data).digest()
        if (len(data), digest) in whole:
            repeats.append((whole[len(data), digest], name))
        whole[len(data), digest] = name
        if "[" not in name:                      # blocks of whole tensors cover the slices too
            for i in range(0, len(data) - block + 1, block):
                blocks[data[i:i + block]].append(f"{name}@{i}")
    repeats += [tuple(v[:2]) for v in blocks.values() if len(v) > 1]
    return repeats


def _small(tmp_path, sub, monkeypatch, seed=0):
    # pieces of 64 KiB: every expert tensor spans several pieces, as the full-size ones do at 64 MiB
    monkeypatch.setattr(synthetic, "PIECE_BYTES", 64 << 10)
    return write_synthetic(tmp_path / sub, "tiny", seed=seed, tokenizer=False, max_shard_bytes=1 << 20)


def test_no_two_tensors_or_expert_slices_share_bytes(tmp_path, monkeypatch):
    ckpt = _small(tmp_path, "c", monkeypatch)
    experts = [n for n, _ in _slices(ckpt) if n.endswith("[1]")]
    assert experts and any(n.endswith("_blocks[1]") for n in experts)     # the check covers stacked experts
    assert _repeats(ckpt) == []


def test_the_distinctness_check_catches_a_repeated_stream(tmp_path, monkeypatch):
    """Negative control: one stream for every piece (what the old pool of windows amounted to)."""
    monkeypatch.setattr(synthetic, "piece_seed", lambda seed, name, row: [seed])
    assert len(_repeats(_small(tmp_path, "c", monkeypatch))) > 10


def test_same_seed_same_bytes(tmp_path, monkeypatch):
    a, b = (_small(tmp_path, s, monkeypatch) for s in ("a", "b"))
    c = _small(tmp_path, "c", monkeypatch, seed=1)
    files = sorted(f.name for f in a.glob("*.safetensors"))
    assert len(files) > 1 and files == sorted(f.name for f in c.glob("*.safetensors"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert all((a / f).read_bytes() != (c / f).read_bytes() for f in files)
