"""Conversions through every path, judged by the oracles: transformers loads our HF outputs, OpenAI's
gpt-oss reference loads our original-format outputs, and their logits match the source model's.

Lossless paths are compared with torch.equal; the one lossy step (packing bf16 experts into MXFP4) is
checked by transformers' own dequantization equalling ours bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from builder.convert_cli import main as cli_main
from checkpoint.convert import convert_checkpoint, load_canonical
from numerics.mxfp4 import MXFP4Weight
from tests.support.checkpoints import CONFIGS, hf_checkpoint, hf_logits, load_hf, prompt, reference_logits

KEYS = sorted(CONFIGS)


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """key -> {path name: folder}: hf -> hf, hf -> hf-mxfp4, hf -> openai -> hf-mxfp4 -> hf -> hf-mxfp4."""
    out = {}
    for key in KEYS:
        d = tmp_path_factory.mktemp(f"chain-{key}")
        src = hf_checkpoint(key)
        f = {"src": src}
        f["hf"] = convert_checkpoint(src, d / "hf", "hf", progress=False)
        f["mx"] = convert_checkpoint(src, d / "mx", "hf-mxfp4", progress=False)
        f["oa"] = convert_checkpoint(src, d / "oa", "openai", progress=False)
        f["oa_mx"] = convert_checkpoint(f["oa"], d / "oa_mx", "hf-mxfp4", progress=False)
        f["oa_mx_hf"] = convert_checkpoint(f["oa_mx"], d / "oa_mx_hf", "hf", progress=False)
        f["oa_mx_hf_mx"] = convert_checkpoint(f["oa_mx_hf"], d / "oa_mx_hf_mx", "hf-mxfp4", progress=False)
        f["mx_oa"] = convert_checkpoint(f["mx"], d / "mx_oa", "openai", progress=False)
        out[key] = f
    return out


@pytest.mark.parametrize("key", KEYS)
def test_hf_to_hf_is_bit_exact(chains, key):
    f = chains[key]
    a, b = _tensors(f["src"]), _tensors(f["hf"])
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    ids = prompt(key)
    assert ids.shape[1] > CONFIGS[key]["sliding_window"]
    assert torch.equal(hf_logits(f["src"], ids), hf_logits(f["hf"], ids))


@pytest.mark.parametrize("key", KEYS)
def test_mxfp4_packing_equals_transformers_dequantization(chains, key):
    """transformers' dequantized experts from our hf-mxfp4 output == our own dequantization, exactly;
    and our hf (dequantized bf16) output gives the same logits bit for bit."""
    f = chains[key]
    cfg = json.loads((f["mx"] / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    model = load_hf(f["mx"], mxfp4=True)
    with load_canonical(f["mx"]) as ck:
        assert ck.format == "hf-mxfp4"
        for i, layer in enumerate(model.model.layers):
            gate = torch.from_numpy(ck.get(f"layers.{i}.moe.gate.weight").dequantize())
            up = torch.from_numpy(ck.get(f"layers.{i}.moe.up.weight").dequantize())
            down = torch.from_numpy(ck.get(f"layers.{i}.moe.down.weight").dequantize())
            ex = layer.mlp.experts
            assert torch.equal(ex.gate_up_proj[..., ::2], gate.transpose(1, 2))
            assert torch.equal(ex.gate_up_proj[..., 1::2], up.transpose(1, 2))
            assert torch.equal(ex.down_proj, down.transpose(1, 2))
    ids = prompt(key)
    with torch.no_grad():
        mx_logits = model(ids).logits[0]
    assert torch.equal(mx_logits, hf_logits(convert_checkpoint(f["mx"], f["mx"].parent / "mx_hf", "hf",
                                                                  progress=False), ids))


@pytest.mark.parametrize("key", KEYS)
def test_openai_reference_matches_transformers(chains, key):
    f = chains[key]
    ids = prompt(key)
    hf = hf_logits(f["mx"], ids, mxfp4=True)
    for oa in (f["oa"], f["mx_oa"]):
        ref = reference_logits(oa, ids)
        assert (ref - hf).abs().max().item() < 1e-5
    # The reference is not trivially equal to anything: the MXFP4 packing moved the logits.
    assert (hf - hf_logits(f["src"], ids)).abs().max() > 1e-3


@pytest.mark.parametrize("key", KEYS)
def test_chain_through_every_format(chains, key):
    f = chains[key]
    mx, oa_mx = _tensors(f["mx"]), _tensors(f["oa_mx"])
    assert mx.keys() == oa_mx.keys()
    for name in mx:                                            # hf -> openai -> hf-mxfp4 == hf -> hf-mxfp4
        assert torch.equal(mx[name], oa_mx[name]), name
    ids = prompt(key)
    lm = hf_logits(f["oa_mx"], ids, mxfp4=True)
    assert torch.equal(lm, hf_logits(f["oa_mx_hf"], ids))      # MXFP4 -> bf16 is exact
    # Re-packing exactly representable values may pick a finer scale, never different values.
    with load_canonical(f["oa_mx"]) as a, load_canonical(f["oa_mx_hf_mx"]) as b:
        for name in a.names():
            va, vb = a.get(name), b.get(name)
            if isinstance(va, MXFP4Weight):
                va, vb = torch.from_numpy(va.dequantize()), torch.from_numpy(vb.dequantize())
            assert torch.equal(va, vb), name
    assert torch.equal(lm, hf_logits(f["oa_mx_hf_mx"], ids, mxfp4=True))
    oa = _tensors(f["oa"])
    assert all(torch.equal(oa[n], t) for n, t in _tensors(f["mx_oa"]).items())


def test_fp32_source_keeps_fp32(tmp_path):
    src = hf_checkpoint("b", dtype="float32")
    out = convert_checkpoint(src, tmp_path / "out", "hf-mxfp4", progress=False)
    t = _tensors(out)
    assert t["model.layers.0.self_attn.sinks"].dtype == torch.float32
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    back = convert_checkpoint(out, tmp_path / "back", "hf", progress=False)
    ids = prompt("b")
    assert torch.equal(hf_logits(out, ids, mxfp4=True), hf_logits(back, ids))


def test_sharded_output_and_small_chunks(tmp_path):
    src = hf_checkpoint("c", shard=True)
    out = convert_checkpoint(src, tmp_path / "out", "hf", progress=False, max_shard_bytes=40_000, chunk_bytes=4096)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    ids = prompt("c")
    assert torch.equal(hf_logits(hf_checkpoint("c"), ids), hf_logits(out, ids))
    mx1 = convert_checkpoint(src, tmp_path / "mx1", "hf-mxfp4", progress=False, chunk_bytes=1)
    mx2 = convert_checkpoint(src, tmp_path / "mx2", "hf-mxfp4", progress=False)
    a, b = _tensors(mx1), _tensors(mx2)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_cli_and_aux_files(tmp_path, capsys):
    src = hf_checkpoint("a")
    assert cli_main([str(src), str(tmp_path / "oa"), "--to", "openai", "--no-progress"]) == 0
    oa = json.loads((tmp_path / "oa" / "config.json").read_text())
    assert list(oa) == ["num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                        "intermediate_size", "swiglu_limit", "head_dim", "num_attention_heads",
                        "num_key_value_heads", "sliding_window", "initial_context_length", "rope_theta",
                        "rope_scaling_factor", "rope_ntk_alpha", "rope_ntk_beta"]
    assert (tmp_path / "oa" / "generation_config.json").exists()
    # The installed console script, with its progress bar on stderr.
    r = subprocess.run([sys.executable, "-m", "builder.convert_cli", str(tmp_path / "oa"), str(tmp_path / "hf"),
                        "--to", "hf"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "oa -> hf" in r.stderr and "tensor" in r.stderr
    assert not list(tmp_path.glob(".*"))                       # no temporary folders left behind


def test_tied_embeddings_and_4x_config_source(tmp_path):
    """A tied model saved by transformers has no lm_head tensor; a transformers 4.x config keeps RoPE in
    rope_scaling + rope_theta. Both convert, and both oracles still agree."""
    from transformers import GptOssForCausalLM

    from tests.support.checkpoints import hf_config, randomize_
    cfg = hf_config("a")
    cfg.tie_word_embeddings = True
    model = GptOssForCausalLM(cfg)
    randomize_(model, seed=7)
    src = tmp_path / "tied"
    model.to(torch.bfloat16).save_pretrained(src)
    raw = json.loads((src / "config.json").read_text())
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope.pop("rope_theta")
    raw["rope_scaling"] = rope
    (src / "config.json").write_text(json.dumps(raw))
    assert "lm_head.weight" not in _tensors(src)
    ids = prompt("a")
    hf = convert_checkpoint(src, tmp_path / "hf", "hf", progress=False)
    assert "lm_head.weight" not in _tensors(hf)
    assert torch.equal(hf_logits(src, ids), hf_logits(hf, ids))
    mx = convert_checkpoint(src, tmp_path / "mx", "hf-mxfp4", progress=False)
    oa = convert_checkpoint(mx, tmp_path / "oa", "openai", progress=False)
    assert torch.equal(_tensors(oa)["unembedding.weight"], _tensors(oa)["embedding.weight"])
    assert (reference_logits(oa, ids) - hf_logits(mx, ids, mxfp4=True)).abs().max() < 1e-5
