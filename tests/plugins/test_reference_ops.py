"""plugins.reference ops against transformers' GptOss modules and OpenAI's gpt_oss.torch.model, op by op."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from numerics.mxfp4 import MXFP4Weight, dequantize_mxfp4, quantize_mxfp4
from plugins.reference.attention import attention_mask, sink_attention
from plugins.reference.linear import UnsupportedQuantError, prepare_expert_weights, prepare_linear
from plugins.reference.moe import clamped_swiglu, moe, route
from plugins.reference.norm import rms_norm
from plugins.reference.rope import apply_rope, rope_cos_sin, yarn_inv_freq

oai = pytest.importorskip("gpt_oss.torch.model")


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- RoPE ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head_dim,factor,orig,theta", [(16, 16.0, 256, 150000.0), (64, 32.0, 4096, 150000.0),
                                                        (32, 4.0, 512, 10000.0)])
def test_yarn_matches_openai_reference(head_dim, factor, orig, theta):
    ref = oai.RotaryEmbedding(head_dim, theta, torch.float32, initial_context_length=orig, scaling_factor=factor,
                              ntk_alpha=1.0, ntk_beta=32.0)
    conc_ref, inv_ref = ref._compute_concentration_and_inv_freq()
    inv, conc = yarn_inv_freq(head_dim, theta, factor, orig, 32.0, 1.0, truncate=False)
    assert conc == pytest.approx(conc_ref, rel=0, abs=1e-12)
    assert conc == pytest.approx(0.1 * math.log(factor) + 1)
    torch.testing.assert_close(inv, inv_ref, rtol=1e-6, atol=0)
    # full rotation of q/k of 40 tokens
    q = torch.randn(40, 2, 3, head_dim)
    k = torch.randn(40, 2, head_dim)
    q_ref, k_ref = ref(q, k)
    cos, sin = rope_cos_sin(torch.arange(40), inv, conc)
    torch.testing.assert_close(apply_rope(q.transpose(0, 2), cos, sin).transpose(0, 2), q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apply_rope(k.transpose(0, 1), cos, sin).transpose(0, 1), k_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("truncate", [False, True])
def test_yarn_matches_transformers(truncate):
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = GptOssConfig(head_dim=16, hidden_size=64, num_attention_heads=4, max_position_embeddings=4096,
                       rope_parameters={"rope_type": "yarn", "factor": 16.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                        "truncate": truncate, "original_max_position_embeddings": 256,
                                        "rope_theta": 150000.0})
    inv_ref, conc_ref = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
    inv, conc = yarn_inv_freq(16, 150000.0, 16.0, 256, 32.0, 1.0, truncate=truncate)
    torch.testing.assert_close(inv, inv_ref, rtol=1e-6, atol=0)
    assert conc == pytest.approx(conc_ref)
    if truncate:   # a different RoPE: the flag matters and is declared in the network
        assert not torch.allclose(inv, yarn_inv_freq(16, 150000.0, 16.0, 256, 32.0, 1.0, truncate=False)[0])


# -- attention -----------------------------------------------------------------------------------------------
def _qkv(T, Hkv=2, G=3, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, Hkv, G, D, generator=g), torch.randn(T, Hkv, D, generator=g),
            torch.randn(T, Hkv, D, generator=g), torch.randn(Hkv * G, generator=g))


@pytest.mark.parametrize("window", [0, 4, 7])
def test_sink_attention_matches_openai_sdpa(window):
    T, Hkv, G, D = 19, 2, 3, 8
    q, k, v, sinks = _qkv(T, Hkv, G, D)
    ref = oai.sdpa(q, k, v, sinks, 0.3, sliding_window=window)                    # [T, Hq*D]
    pos = torch.arange(T)[None]
    mask = attention_mask(pos, pos, window or None)
    out = sink_attention(q.reshape(T, Hkv * G, D).transpose(0, 1)[None], k.transpose(0, 1)[None],
                         v.transpose(0, 1)[None], mask, sinks, 0.3)
    torch.testing.assert_close(out[0].transpose(0, 1).reshape(T, -1), ref, rtol=1e-5, atol=1e-6)


def test_window_boundary_matches_transformers():
    """transformers: kv_idx > q_idx - window, i.e. i - j < window (the query itself counts)."""
    from transformers.masking_utils import sliding_window_causal_mask_function
    fn = sliding_window_causal_mask_function(5)
    pos = torch.arange(12)
    ours = attention_mask(pos[None], pos[None], 5)[0]
    t = lambda n: torch.tensor(n)  # noqa: E731
    theirs = torch.tensor([[bool(fn(t(0), t(0), t(i), t(j))) for j in range(12)] for i in range(12)])
    assert torch.equal(ours, theirs)
    assert ours[11].sum() == 5


def test_learned_sinks_absorb_mass_and_change_output():
    q, k, v, sinks = _qkv(6)
    pos = torch.arange(6)[None]
    args = (q.reshape(6, 6, 8).transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            attention_mask(pos, pos))
    with_sinks = sink_attention(*args, sinks, 0.35)
    zero_sinks = sink_attention(*args, torch.zeros_like(sinks), 0.35)
    no_sinks = sink_attention(*args, None, 0.35)
    assert not torch.allclose(with_sinks, zero_sinks, atol=1e-3)
    assert not torch.allclose(zero_sinks, no_sinks, atol=1e-3)
    # the first token sees only itself: without sinks its output is v[0]; with a sink, a fraction of it
    torch.testing.assert_close(no_sinks[0, :, 0], v[0].repeat_interleave(3, dim=0))
    frac = torch.sigmoid(q[0].reshape(6, 8).mul(k[0].repeat_interleave(3, 0)).sum(-1) * 0.35 - sinks)
    torch.testing.assert_close(with_sinks[0, :, 0], v[0].repeat_interleave(3, 0) * frac[:, None])


def test_sink_tokens_against_dense_loop():
    """StreamingLLM: a sliding layer with S sink tokens sees keys j with i - j < W or j < S (and j <= i)."""
    T, W, S = 23, 5, 3
    q, k, v, sinks = _qkv(T, seed=3)
    pos = torch.arange(T)[None]
    out = sink_attention(q.reshape(T, 6, 8).transpose(0, 1)[None], k.transpose(0, 1)[None],
                         v.transpose(0, 1)[None], attention_mask(pos, pos, W, S), sinks, 0.3)[0]
    for i in range(T):
        keys = [j for j in range(i + 1) if i - j < W or j < S]
        for h in range(6):
            kv = h // 3
            logits = torch.stack([q[i, kv, h % 3] @ k[j, kv] * 0.3 for j in keys] + [sinks[h]])
            p = torch.softmax(logits, 0)[:-1]
            expect = sum(p[n] * v[j, kv] for n, j in enumerate(keys))
            torch.testing.assert_close(out[h, i], expect, rtol=1e-5, atol=1e-6)


def test_mask_from_positions_ignores_slot_order_and_empty_slots():
    q_pos = torch.tensor([[9]])
    k_pos = torch.tensor([[8, 9, -1, 5, 6, 7]])          # a ring buffer after wrap-around, one empty slot
    assert attention_mask(q_pos, k_pos, 4).tolist() == [[[True, True, False, False, True, True]]]
    assert attention_mask(q_pos, k_pos, 4, sink_tokens=6).tolist() == [[[True, True, False, True, True, True]]]
    assert attention_mask(torch.tensor([[-1]]), k_pos).sum() == 0     # padding queries see nothing


# -- norm, MoE -----------------------------------------------------------------------------------------------
def test_rms_norm_matches_transformers():
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm
    norm = GptOssRMSNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    x = torch.randn(5, 32) * 3
    torch.testing.assert_close(rms_norm(x, norm.weight.detach(), 1e-5), norm(x).detach(), rtol=0, atol=0)
    xb = x.bfloat16()
    assert rms_norm(xb, norm.weight.detach(), 1e-5).dtype == torch.bfloat16


def test_clamped_swiglu_matches_openai():
    x = torch.randn(64, 40) * 6                          # interleaved gate/up as OpenAI's mlp1 emits
    ref = oai.swiglu(x, alpha=1.702, limit=7.0)
    torch.testing.assert_close(clamped_swiglu(x[:, ::2], x[:, 1::2], 1.702, 7.0), ref)
    gate = torch.tensor([-20.0, 20.0])
    up = torch.tensor([-20.0, 20.0])
    out = clamped_swiglu(gate, up, 1.702, 7.0)
    # gate has no lower clamp (-20 stays -20), up clamps to -7..7, then (up + 1) * glu
    expect = torch.tensor([(-7 + 1) * (-20 * torch.sigmoid(torch.tensor(-20 * 1.702))),
                           (7 + 1) * (7 * torch.sigmoid(torch.tensor(7 * 1.702)))])
    torch.testing.assert_close(out, expect)
    assert not torch.allclose(clamped_swiglu(gate, up, 1.702, None), out)


def test_route_topk_then_softmax():
    x = torch.randn(7, 16)
    w, b = torch.randn(8, 16), torch.randn(8)
    weights, idx = route(x, w, b, 3)
    logits = x @ w.T + b
    assert torch.equal(idx, logits.topk(3).indices)
    torch.testing.assert_close(weights, torch.softmax(logits.topk(3).values, -1))
    assert not torch.allclose(weights, torch.softmax(logits, -1).gather(1, idx))   # not softmax-then-top-k


def _experts(E=8, H=32, I=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(rw=r(E, H), rb=r(E), wg=r(E, I, H) * 0.3, wu=r(E, I, H) * 0.3, bg=r(E, I), bu=r(E, I),
                wd=r(E, H, I) * 0.3, bd=r(E, H))


@pytest.mark.parametrize("n_tokens", [1, 3, 40])
def test_moe_matches_transformers_module(n_tokens):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    E, H, I, K = 8, 32, 24, 4
    p = _experts(E, H, I)
    mlp = GptOssMLP(GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K))
    mlp.experts.set_experts_implementation("eager") if hasattr(mlp.experts, "set_experts_implementation") else None
    with torch.no_grad():
        mlp.router.weight.copy_(p["rw"]); mlp.router.bias.copy_(p["rb"])
        gate_up = torch.empty(E, H, 2 * I)
        gate_up[..., ::2], gate_up[..., 1::2] = p["wg"].transpose(1, 2), p["wu"].transpose(1, 2)   # HF interleave
        mlp.experts.gate_up_proj.copy_(gate_up)
        b = torch.empty(E, 2 * I)
        b[:, ::2], b[:, 1::2] = p["bg"], p["bu"]
        mlp.experts.gate_up_proj_bias.copy_(b)
        mlp.experts.down_proj.copy_(p["wd"].transpose(1, 2)); mlp.experts.down_proj_bias.copy_(p["bd"])
        x = torch.randn(1, n_tokens, H) * 2
        ref = mlp(x)[0][0]
    args = (x[0], p["rw"], p["rb"], torch.cat([p["wg"], p["wu"]], 1), torch.cat([p["bg"], p["bu"]], 1), p["wd"],
            p["bd"], K, 1.702, 7.0)
    for gather_bytes in (0, 1 << 30):                   # every schedule: weight gather, expert loops
        out = moe(*args, gather_bytes=gather_bytes)
        assert _rel(out, ref) < 1e-5


def test_moe_matches_openai_mlp_block():
    E, H, I, K = 8, 32, 24, 4
    p = _experts(E, H, I, seed=1)
    cfg = oai.ModelConfig(num_experts=E, experts_per_token=K, hidden_size=H, intermediate_size=I)
    block = oai.MLPBlock(cfg).float()
    with torch.no_grad():
        block.gate.weight.copy_(p["rw"]); block.gate.bias.copy_(p["rb"])
        w1 = torch.empty(E, 2 * I, H)
        w1[:, ::2], w1[:, 1::2] = p["wg"], p["wu"]
        b1 = torch.empty(E, 2 * I)
        b1[:, ::2], b1[:, 1::2] = p["bg"], p["bu"]
        block.mlp1_weight.copy_(w1); block.mlp1_bias.copy_(b1)
        block.mlp2_weight.copy_(p["wd"]); block.mlp2_bias.copy_(p["bd"])
        x = torch.randn(9, H)
        ref = block(x)                                   # includes its RMSNorm (scale 1) and the residual
    t = rms_norm(x, torch.ones(H), 1e-5)
    out = x + moe(t, p["rw"], p["rb"], torch.cat([p["wg"], p["wu"]], 1), torch.cat([p["bg"], p["bu"]], 1),
                  p["wd"], p["bd"], K, 1.702, 7.0)
    assert _rel(out, ref) < 1e-5


# -- linears per quant format -------------------------------------------------------------------------------
def test_mxfp4_linear_is_dequantized_weight():
    w = np.random.default_rng(0).normal(size=(3, 16, 64)).astype(np.float32)
    blocks, scales = quantize_mxfp4(w, "rceil")
    packed = MXFP4Weight(blocks, scales)
    dense = prepare_expert_weights(packed, "mxfp4", "x", torch.float32)
    assert torch.equal(dense, torch.from_numpy(dequantize_mxfp4(blocks, scales)))
    lin = prepare_linear(MXFP4Weight(blocks[0], scales[0]), torch.zeros(16), "mxfp4", "y", torch.float32)
    x = torch.randn(2, 64)
    torch.testing.assert_close(lin(x), x @ dense[0].T)


def test_quant_mismatch_and_missing_formats_fail_clearly():
    w = torch.randn(16, 64)
    blocks, scales = quantize_mxfp4(w.numpy(), "rceil")
    with pytest.raises(ValueError, match="declares this module unquantized .* packed MXFP4"):
        prepare_linear(MXFP4Weight(blocks, scales), None, "bf16", "layers.0.moe.gate.weight", torch.float32)
    with pytest.raises(ValueError, match="declares this module 'mxfp4' but the checkpoint holds an unquantized"):
        prepare_linear(w, None, "mxfp4", "layers.0.moe.gate.weight", torch.float32)
    with pytest.raises(ValueError, match="declares this module 'nvfp4' but the checkpoint holds Tensor"):
        prepare_linear(w, None, "nvfp4", "w", torch.float32, input_scale=0.01)
    from numerics.nvfp4 import quantize_nvfp4
    with pytest.raises(UnsupportedQuantError, match="needs the calibrated input_scale"):
        prepare_linear(quantize_nvfp4(w.numpy()), None, "nvfp4", "w", torch.float32)
    with pytest.raises(UnsupportedQuantError, match="cannot execute quant format 'int3': no such format"):
        prepare_linear(w, None, "int3", "w", torch.float32)


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_activation_quantized_linears(fmt):
    """W4A4 / W8A8: weights dequantized from numerics's packed form, activations fake-quantized with the
    calibrated input scale before the GEMM; close to, but not equal to, the float GEMM."""
    from numerics import fp8, nvfp4
    g = torch.Generator().manual_seed(0)
    w, x, b = torch.randn(32, 64, generator=g) * 0.1, torch.randn(5, 64, generator=g) * 2, torch.randn(32, generator=g)
    if fmt == "nvfp4":
        packed = nvfp4.quantize_nvfp4(w.numpy())
        input_scale = float(x.abs().max()) / (6 * 448)
        xq = torch.from_numpy(nvfp4.fake_quantize_nvfp4_activations(x.numpy(), input_scale))
    else:
        packed = fp8.quantize_fp8(w.numpy())
        input_scale = float(x.abs().max()) / 448
        xq = torch.from_numpy(fp8.dequantize_fp8(*fp8.quantize_fp8_per_tensor(x.numpy(), input_scale)))
    lin = prepare_linear(packed, b, fmt, "w", torch.float32, input_scale=input_scale)
    wq = torch.from_numpy(packed.dequantize())
    torch.testing.assert_close(lin(x), xq @ wq.T + b)
    exact = x @ w.T + b
    err = _rel(lin(x), exact)
    assert 1e-4 < err < (0.2 if fmt == "nvfp4" else 0.05), err
    assert not torch.equal(xq, x)


def test_moe_activation_quant_hooks_quantize_each_gemm_input():
    """With activation fake-quant, the gate/up GEMM sees q_in(x) and the down GEMM q_mid(swiglu), per expert."""
    E, H, I, K = 8, 32, 24, 4
    p = _experts(E, H, I, seed=2)
    x = torch.randn(6, H)
    q_in = lambda t: torch.round(t * 4) / 4                   # noqa: E731  any visible quantizer will do
    q_mid = lambda t: torch.round(t * 2) / 2                  # noqa: E731
    out = moe(x, p["rw"], p["rb"], torch.cat([p["wg"], p["wu"]], 1), torch.cat([p["bg"], p["bu"]], 1), p["wd"],
              p["bd"], K, 1.702, 7.0, act_quant_in=q_in, act_quant_mid=q_mid)
    expect = torch.zeros_like(x)
    for n in range(6):
        logits = x[n] @ p["rw"].T + p["rb"]                    # the router sees the unquantized input
        top = logits.topk(K)
        for wgt, e in zip(torch.softmax(top.values, 0), top.indices):
            gate = q_in(x[n]) @ p["wg"][e].T + p["bg"][e]
            up = q_in(x[n]) @ p["wu"][e].T + p["bu"][e]
            a = clamped_swiglu(gate, up, 1.702, 7.0)
            expect[n] += wgt * (q_mid(a) @ p["wd"][e].T + p["bd"][e])
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B,Hq,Hkv,T,S", [(1, 4, 2, 1, 30), (2, 6, 1, 1, 30), (2, 4, 2, 7, 30), (1, 4, 4, 5, 5)])
def test_fused_attention_equals_the_explicit_op(B, Hq, Hkv, T, S):
    """sink_attention_fused (flash kernel + log-sum-exp, sink as sigmoid(lse - sink)) is the same op."""
    from plugins.reference.attention import mask_bias, sink_attention_fused
    g = torch.Generator().manual_seed(B * 100 + T)
    q, k, v = (torch.randn(B, Hq, T, 16, generator=g), torch.randn(B, Hkv, S, 16, generator=g),
               torch.randn(B, Hkv, S, 16, generator=g))
    sinks = torch.randn(Hq, generator=g)
    q_pos = torch.arange(S - T, S).repeat(B, 1)
    k_pos = torch.arange(S).repeat(B, 1)
    k_pos[0, 3] = -1                                      # an empty slot
    if B > 1:
        q_pos[1, -1] = -1                                 # a padding query: sees nothing
    visible = attention_mask(q_pos, k_pos, 8)
    for s in (sinks, None):
        ref = sink_attention(q, k, v, visible, s, 0.3)
        out = sink_attention_fused(q, k, v, mask_bias(visible), s, 0.3)
        seen = visible.any(-1)                            # rows that see at least one key
        assert torch.isfinite(out).all()
        assert (out - ref).abs().amax(dim=(1, 3))[seen].max() < 1e-5


def test_full_width_rope_equals_half_split():
    from plugins.reference.rope import apply_rope_full, rope_full_tables
    inv, conc = yarn_inv_freq(16, 150000.0, 16.0, 256)
    cos, sin = rope_cos_sin(torch.arange(50), inv, conc)
    x = torch.randn(3, 50, 16)
    torch.testing.assert_close(apply_rope_full(x, *rope_full_tables(cos, sin)), apply_rope(x, cos, sin))
