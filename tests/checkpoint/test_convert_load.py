"""load_canonical on transformers-saved checkpoints: names, shapes, and every quirk checked value by value
against transformers' own parameters."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from checkpoint.convert import load_canonical
from spec.canonical import canonical_shapes
from tests.support.checkpoints import CONFIGS, hf_checkpoint


def _hf_tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_hf_bf16_canonical_values(key):
    folder = hf_checkpoint(key)
    hf = _hf_tensors(folder)
    with load_canonical(folder) as ck:
        c = ck.config
        assert ck.format == "hf"
        assert c.name == folder.name
        assert (c.num_layers, c.hidden_size, c.head_dim, c.num_q_heads, c.num_kv_heads, c.num_experts,
                c.experts_per_token, c.intermediate_size, c.sliding_window, c.vocab_size) == (
            CONFIGS[key]["num_hidden_layers"], CONFIGS[key]["hidden_size"], CONFIGS[key]["head_dim"],
            CONFIGS[key]["num_attention_heads"], CONFIGS[key]["num_key_value_heads"],
            CONFIGS[key]["num_local_experts"], CONFIGS[key]["num_experts_per_tok"],
            CONFIGS[key]["intermediate_size"], CONFIGS[key]["sliding_window"], CONFIGS[key]["vocab_size"])
        assert c.rope_scaling_factor == CONFIGS[key]["factor"] and c.rope_original_max_position == 256
        assert ck.names() == list(canonical_shapes(c))
        seen = []
        for name, value in ck.tensors():
            seen.append(name)
            assert tuple(value.shape) == canonical_shapes(c)[name]
            assert value.dtype == torch.bfloat16
        assert seen == ck.names()
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([hf[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
            assert torch.equal(ck.get(f"layers.{i}.attn.qkv.weight"), qkv)
            assert torch.equal(ck.get(f"layers.{i}.attn.sinks"), hf[p + "self_attn.sinks"])
            gate_up = hf[p + "mlp.experts.gate_up_proj"]                       # [E, H, 2I], x @ W
            assert torch.equal(ck.get(f"layers.{i}.moe.gate.weight"), gate_up[..., ::2].transpose(1, 2))
            assert torch.equal(ck.get(f"layers.{i}.moe.up.weight"), gate_up[..., 1::2].transpose(1, 2))
            bias = hf[p + "mlp.experts.gate_up_proj_bias"]
            assert torch.equal(ck.get(f"layers.{i}.moe.gate.bias"), bias[:, ::2])
            assert torch.equal(ck.get(f"layers.{i}.moe.up.bias"), bias[:, 1::2])
            assert torch.equal(ck.get(f"layers.{i}.moe.down.weight"), hf[p + "mlp.experts.down_proj"].transpose(1, 2))
            assert torch.equal(ck.get(f"layers.{i}.moe.router.bias"), hf[p + "mlp.router.bias"])
            assert ck.get(f"layers.{i}.attn.sinks").abs().min() > 0


def test_canonical_matches_transformers_modules():
    """The canonical gate really is what transformers' experts use as gate (not up): one expert, one token."""
    from transformers import GptOssForCausalLM
    folder = hf_checkpoint("a")
    model = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32)
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(3, model.config.hidden_size)
    gate_up = x @ experts.gate_up_proj[1] + experts.gate_up_proj_bias[1]
    with load_canonical(folder) as ck:
        gate = x @ ck.get("layers.0.moe.gate.weight")[1].float().T + ck.get("layers.0.moe.gate.bias")[1].float()
        up = x @ ck.get("layers.0.moe.up.weight")[1].float().T + ck.get("layers.0.moe.up.bias")[1].float()
    torch.testing.assert_close(gate, gate_up[..., ::2])
    torch.testing.assert_close(up, gate_up[..., 1::2])


def test_sharded_equals_single_file():
    single, sharded = hf_checkpoint("b"), hf_checkpoint("b", shard=True)
    assert (sharded / "model.safetensors.index.json").exists()
    with load_canonical(single) as a, load_canonical(sharded) as b:
        assert a.names() == b.names()
        for name in a.names():
            assert torch.equal(a.get(name), b.get(name)), name


def test_row_ranges_equal_slices():
    with load_canonical(hf_checkpoint("b", dtype="float32")) as ck:
        assert ck.get("embed.weight").dtype == torch.float32
        for name in ("layers.1.moe.gate.weight", "layers.1.moe.down.weight", "layers.1.moe.up.bias",
                     "embed.weight", "layers.0.attn.qkv.weight"):
            full = ck.get(name)
            assert torch.equal(ck.get(name, slice(2, 5)), full[2:5]), name
