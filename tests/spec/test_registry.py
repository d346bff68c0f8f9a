"""Every registry entry is complete and self-consistent; auto quant is a lookup that always resolves."""

import dataclasses

import pytest

from spec.capabilities import KERNELS, SM_CAPABILITIES, kernel_status
from spec.registry import MODELS
from spec.registry.gpus import GPUS
from spec.registry.quant_formats import AUTO_QUANT_BY_ARCH, QUANT_FORMATS


@pytest.mark.parametrize("name", MODELS)
def test_model_entries_are_complete(name):
    m = MODELS[name]
    assert m.name == name and m.source
    assert m.num_layers >= 2 and m.layer_types[0] == "sliding_attention" and m.layer_types[1] == "full_attention"
    assert m.num_q_heads % m.num_kv_heads == 0
    assert m.hidden_size % 32 == 0 and m.intermediate_size % 32 == 0, "MXFP4 blocks of 32 must tile the linears"
    assert m.mlp in ("moe", "dense")
    if m.is_moe:
        assert 0 < m.experts_per_token <= m.num_experts
    assert m.learned_sinks and m.attention_bias and m.swiglu_limit == 7.0 and m.swiglu_alpha == 1.702


def test_released_configs_are_exact():
    # huggingface.co/openai/gpt-oss-{20b,120b}/config.json
    for name, layers, experts in (("20b", 24, 32), ("120b", 36, 128)):
        m = MODELS[name]
        assert (m.num_layers, m.num_experts, m.experts_per_token) == (layers, experts, 4)
        assert (m.hidden_size, m.intermediate_size, m.head_dim) == (2880, 2880, 64)
        assert (m.num_q_heads, m.num_kv_heads, m.vocab_size) == (64, 8, 201088)
        assert (m.sliding_window, m.rope_theta, m.rope_scaling_factor) == (128, 150000.0, 32.0)
        assert (m.rope_original_max_position, m.rope_beta_fast, m.rope_beta_slow) == (4096, 32.0, 1.0)
        assert m.max_position_embeddings == 131072 and m.rms_norm_eps == 1e-5 and m.sink_tokens == 0


def test_tiny_window_is_smaller_than_typical_prompts():
    assert MODELS["tiny"].sliding_window < 32


@pytest.mark.parametrize("name", GPUS)
def test_gpu_entries_are_complete(name):
    g = GPUS[name]
    assert g.name == name and g.source and g.interconnect
    for f in dataclasses.fields(g):
        if f.name not in ("fp8_tflops", "fp4_tflops", "sm"):
            assert getattr(g, f.name) is not None, f.name
    assert g.memory_gb > 0 and g.bandwidth_tb_s > 0 and g.bf16_tflops > 0 and g.max_gpus_per_node >= 1
    assert g.arch in AUTO_QUANT_BY_ARCH
    assert g.sm in SM_CAPABILITIES
    if g.native_fp4:
        assert g.native_fp8 and g.fp4_tflops > g.fp8_tflops > g.bf16_tflops


def test_required_gpus_present():
    required = {"b200", "b300", "gb200", "h100", "h200", "gh200", "a100-80gb", "l40s", "rtx-pro-6000", "rtx-5090", "cpu"}
    assert required <= set(GPUS)


@pytest.mark.parametrize("name", QUANT_FORMATS)
def test_quant_entries_are_complete(name):
    q = QUANT_FORMATS[name]
    assert q.name == name and q.description and q.checkpoint
    assert all(k in KERNELS for k in q.kernels)
    assert 4 <= q.bits_per_weight <= 16


def test_bits_per_weight_include_scales():
    assert QUANT_FORMATS["mxfp4"].bits_per_weight == 4.25      # 4 + 8/32
    assert QUANT_FORMATS["nvfp4"].bits_per_weight == 4.5       # 4 + 8/16
    assert QUANT_FORMATS["fp8"].bits_per_weight == 8
    assert QUANT_FORMATS["bf16"].bits_per_weight == 16


@pytest.mark.parametrize("gpu", GPUS)
def test_auto_quant_runs_on_every_gpu(gpu):
    g = GPUS[gpu]
    q = QUANT_FORMATS[AUTO_QUANT_BY_ARCH[g.arch]]
    assert all(kernel_status(g.sm, k) for k in q.kernels)


def test_auto_quant_by_generation():
    auto = {n: AUTO_QUANT_BY_ARCH[g.arch] for n, g in GPUS.items()}
    assert auto["b200"] == auto["gb200"] == auto["b300"] == auto["rtx-pro-6000"] == "nvfp4"
    assert auto["h100"] == auto["h200"] == auto["gh200"] == "mxfp4"
    assert auto["l40s"] == "fp8" and auto["a100-80gb"] == "bf16" and auto["cpu"] == "bf16"


def test_capabilities_follow_upstream_facts():
    # FIELD-NOTES §6: TRTLLM MoE on SM100/103 only; NVFP4 needs FP4 tensor cores (not Hopper).
    assert "TRTLLM" in SM_CAPABILITIES[100].moe_backends and "TRTLLM" not in SM_CAPABILITIES[90].moe_backends
    assert "TRTLLM" not in SM_CAPABILITIES[120].moe_backends
    assert kernel_status(90, "gemm_nvfp4") is None and kernel_status(100, "gemm_nvfp4") == "supported"
    assert kernel_status(90, "moe_mxfp4_w4a16") == "supported"
    assert kernel_status(80, "gemm_fp8") is None


def test_streaming_sink_tokens_run_only_in_the_reference_runtime():
    # TensorRT-LLM's PyTorch backend ignores sink_token_length (builder/data/trtllm_llm_args_fields.json).
    assert kernel_status(None, "streaming_sink_tokens") == "supported"
    assert all(kernel_status(sm, "streaming_sink_tokens") is None for sm in SM_CAPABILITIES if sm is not None)
