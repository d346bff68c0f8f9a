"""checkpoint.quant_policy: which canonical tensors each format quantizes, shared scales, and that the
checkpoint tables quantize exactly what the policy says."""

from __future__ import annotations

import pytest

from checkpoint.convert.mapping import expand
from checkpoint.quant_policy import QUANT_FORMATS, format_for_checkpoint, policy
from spec.registry import get_model

TINY = get_model("tiny")


def _names(pattern_parts):
    return {f"layers.{i}.{p}.weight" for i in range(TINY.num_layers) for p in pattern_parts}


def test_what_each_format_quantizes():
    experts = _names(["moe.gate", "moe.up", "moe.down"])
    assert set(policy("nvfp4").quantized(TINY)) == experts               # TensorRT-LLM keeps attention bf16
    assert set(policy("w4a16-nvfp4").quantized(TINY)) == experts
    assert set(policy("mxfp4").quantized(TINY)) == experts
    assert set(policy("fp8").quantized(TINY)) == experts | _names(["attn.qkv", "attn.out"])
    assert policy("bf16").quantized(TINY) == []
    for fmt in QUANT_FORMATS:                                             # never router, embeddings, lm_head
        q = set(policy(fmt).quantized(TINY))
        assert not q & ({"embed.weight", "lm_head.weight"} | _names(["moe.router"]))
    dense = get_model("20b-dense")
    assert "layers.0.mlp.down.weight" in policy("fp8").quantized(dense)


def test_activation_scales_and_sharing():
    assert policy("nvfp4").activations == "nvfp4" and policy("fp8").activations == "fp8"
    assert policy("w4a16-nvfp4").activations is None and policy("mxfp4").activations is None
    assert policy("nvfp4").input_scale(2688.0) == 1.0 and policy("fp8").input_scale(448.0) == 1.0
    with pytest.raises(ValueError, match="quantizes no activations"):
        policy("w4a16-nvfp4").input_scale(1.0)
    p = policy("fp8")
    assert p.shared_with("layers.3.moe.gate.weight") == ("layers.3.moe.gate.weight", "layers.3.moe.up.weight")
    assert p.shared_with("layers.3.attn.qkv.weight") == ("layers.3.attn.qkv.weight",)  # q|k|v: one tensor
    assert p.is_quantized("layers.2.attn.out.weight") and not policy("nvfp4").is_quantized("layers.2.attn.out.weight")


def test_formats_per_checkpoint_layout():
    assert format_for_checkpoint("hf-nvfp4", True) == "nvfp4"
    assert format_for_checkpoint("hf-nvfp4", False) == "w4a16-nvfp4"
    assert format_for_checkpoint("hf-fp8", True) == "fp8"
    assert format_for_checkpoint("hf-mxfp4", False) == "mxfp4"
    with pytest.raises(ValueError, match="no quant format stores 'hf-fp8' checkpoints weight-only"):
        format_for_checkpoint("hf-fp8", False)


@pytest.mark.parametrize("fmt", ["nvfp4", "w4a16-nvfp4", "fp8"])
def test_tables_quantize_what_the_policy_says(fmt):
    pol = policy(fmt)
    features = ("input_scales", "kv_scales") if pol.calibrated else ()
    ex = expand(QUANT_FORMATS[fmt].checkpoint, TINY, features)
    written = {n for _, (quirk, ins) in ex.write.items() if getattr(quirk, "quantizes", None) for n in ins}
    read = {n for n, (quirk, _) in ex.read.items() if getattr(quirk, "makes_quant", None)}
    assert written == read == set(pol.quantized(TINY))
    assert {n for n in ex.canonical if n.endswith(".input_scale")} == set(pol.input_scale_names(TINY))
