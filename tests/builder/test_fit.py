"""Planner arithmetic against hand-computed cases, the parallelism search and the verdicts."""

import pytest

from builder.fit import INCOMPATIBLE, LOW_MEMORY, RUNNABLE, FitError, kv_full_attention_bytes, plan
from spec.registry import MODELS


def test_120b_b200_batch1_decode_is_bandwidth_arithmetic():
    p = plan("120b", "b200", quant="mxfp4", tp=1)
    # active experts 36 layers x 4 x 3 x 2880^2 at 4.25 bits + expert biases, attention + router bf16,
    # unembedding bf16: about 5.0 GB read per token (FIELD-NOTES §9).
    experts = 36 * 4 * 3 * 2880 * 2880 * 4.25 / 8 + 36 * 4 * (2 * 2880 + 2880) * 2
    attn = 36 * ((2880 * 4096 * 2 + 2880 * 512 * 2) + (4096 + 1024 + 2880) + 64) * 2
    router = 36 * (128 * 2880 + 128) * 2
    norms = (2 * 36 + 1) * 2880 * 2
    unembed = 201088 * 2880 * 2
    expected = experts + attn + router + norms + unembed
    assert p.bytes_read_per_token_batch1 == pytest.approx(expected, rel=1e-9)
    assert p.bytes_read_per_token_batch1 == pytest.approx(5.0e9, rel=0.02)
    assert p.decode_tokens_per_s_batch1 == pytest.approx(8e12 / expected, rel=1e-9)


def test_kv_bytes_hand_computed():
    p = plan("20b", "b200", max_seq_len=8192, tp=1, kv_dtype="bf16")
    per_layer_token = 2 * 8 * 64 * 2                     # K and V, 8 kv heads x 64, bf16
    assert p.kv_bytes_per_token == 12 * per_layer_token  # only the 12 full-attention layers grow
    assert p.sliding_kv_bytes_per_sequence == 12 * per_layer_token * 128
    assert p.kv_bytes_per_sequence == 12 * per_layer_token * (8192 + 128)
    assert kv_full_attention_bytes(MODELS["20b"], 8192) == 24 * per_layer_token * 8192


def test_fp8_kv_halves_kv_bytes():
    assert plan("20b", "b200", kv_dtype="fp8").kv_bytes_per_token * 2 == plan("20b", "b200", kv_dtype="bf16").kv_bytes_per_token


def test_kv_dtype_defaults_to_what_the_target_serves_with():
    assert plan("20b", "b200").kv_dtype == "fp8"      # Blackwell recipes run an FP8 KV cache
    assert plan("20b", "h200").kv_dtype == "bf16"


def test_tp_splits_attention_vocab_and_experts_and_replicates_router():
    one, two = plan("120b", "b200", quant="mxfp4", tp=1), plan("120b", "b200", quant="mxfp4", tp=2)
    router_and_norms = 36 * (128 * 2880 + 128) * 2 + (2 * 36 + 1) * 2880 * 2
    assert two.weight_bytes_per_gpu == pytest.approx((one.weight_bytes_per_gpu - router_and_norms) / 2
                                                     + router_and_norms, rel=1e-9)


def test_max_concurrent_sequences_is_budget_over_per_sequence_kv():
    p = plan("20b", "h100", tp=1, max_seq_len=32768)
    assert p.max_concurrent_sequences == int(p.kv_budget_bytes_per_gpu // p.kv_bytes_per_sequence)
    assert p.kv_budget_bytes_per_gpu == pytest.approx(
        (80e9 - p.weight_bytes_per_gpu - p.runtime_reserve_bytes) * 0.9, rel=1e-9)


def test_20b_on_rtx_5090_is_runnable():
    assert plan("20b", "rtx-5090").verdict == RUNNABLE


def test_120b_on_rtx_5090_tp1_is_incompatible_with_reason():
    p = plan("120b", "rtx-5090", tp=1)
    assert p.verdict == INCOMPATIBLE
    assert any("weights need" in r and "32 GB" in r for r in p.reasons)
    assert any("fits on one of" in r and "b200" in r for r in p.reasons)


def test_parallelism_search_picks_smallest_tp_that_fits():
    p = plan("120b", "a100-80gb")           # bf16: ~234 GB of weights
    assert p.verdict == RUNNABLE and p.tp == 4
    assert plan("120b", "a100-80gb", tp=2).verdict == INCOMPATIBLE
    assert plan("20b", "b200").tp == 1


def test_low_memory_suggests_a_shorter_context_or_smaller_batch():
    p = plan("120b", "h100", tp=1, max_batch_size=64)
    assert p.verdict == LOW_MEMORY
    assert p.fits_max_batch_size and p.fits_max_batch_size < 64
    assert p.fits_max_seq_len and p.fits_max_seq_len < 131072
    assert plan("120b", "h100", tp=1, max_batch_size=64, max_seq_len=p.fits_max_seq_len).verdict == RUNNABLE
    assert any("--max-seq-len" in r for r in p.reasons)


def test_unverified_kernels_are_flagged():
    p = plan("20b", "rtx-pro-6000")
    assert p.kernels["gemm_nvfp4"] == "unverified" and any("unverified" in r for r in p.reasons)


@pytest.mark.parametrize("kwargs,message", [
    (dict(model_name="20b", gpu_name="h100", quant="nvfp4"), "lacks"),
    (dict(model_name="20b", gpu_name="b200", tp=3), "divisor of the 64 attention heads"),
    (dict(model_name="20b", gpu_name="b200", tp=16), "exceeds the 8"),
    (dict(model_name="20b", gpu_name="b200", tp=8, ep=64), "above the 32 experts"),
    (dict(model_name="20b", gpu_name="b200", tp=2, ep=4), "must divide --tp"),
    (dict(model_name="20b-dense", gpu_name="b200", ep=2), "no experts"),
    (dict(model_name="20b", gpu_name="b200", max_seq_len=10**6), "context of 131072"),
    (dict(model_name="nope", gpu_name="b200"), "valid models: tiny, 20b"),
    (dict(model_name="20b", gpu_name="h900"), "valid gpus: b200"),
    (dict(model_name="20b", gpu_name="b200", quant="int3"), "valid quants: auto, bf16"),
])
def test_impossible_requests_raise(kwargs, message):
    with pytest.raises(FitError, match=message):
        plan(**kwargs)


def test_fp8_on_gpu_says_trtllm_cannot_load_it():
    assert any("does not read fp8" in r for r in plan("20b", "l40s").reasons)
    assert not any("does not read" in r for r in plan("20b", "b200").reasons)


def test_streaming_sink_tokens_are_incompatible_on_gpus(monkeypatch):
    from spec.registry import MODELS
    monkeypatch.setitem(MODELS, "tiny-sinks", MODELS["tiny"].with_overrides(name="tiny-sinks", sink_tokens=4))
    p = plan("tiny-sinks", "b200")
    assert p.verdict == INCOMPATIBLE and any("StreamingLLM" in r for r in p.reasons)
    assert plan("tiny-sinks", "cpu").verdict == RUNNABLE
