"""The reference runtime against transformers' GptOssForCausalLM and OpenAI's gpt-oss reference (fp32).

Parity measure: max |ours - theirs| / max |theirs| over the logits, goal < 1e-5.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch

from checkpoint.convert import load_canonical
from runtime import Runtime, SamplingParams
from spec.network import Network, network_from_config
from tests.support.runtime import CONFIGS, converted, hf_model, prompt, rel_diff

TOL = 1e-5
KEYS = sorted(CONFIGS)


@functools.cache
def runtime(key: str) -> Runtime:
    return Runtime.from_dir(hf_model(key)[1])


@functools.cache
def tensors(key: str) -> dict:
    with load_canonical(hf_model(key)[1]) as ck:
        return dict(ck.tensors())


def hf_logits(key: str, ids, attention_mask=None) -> torch.Tensor:
    model = hf_model(key)[0]
    with torch.no_grad():
        return model(torch.tensor([list(ids)]), attention_mask=attention_mask).logits[0]


# -- parity ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", KEYS)
def test_prefill_parity_prompt_longer_than_window(key):
    W = CONFIGS[key].sliding_window
    ids = prompt(key, 3 * W + 5)
    ours = runtime(key).prompt_logits(ids)
    assert ours.dtype == torch.float32 and ours.shape == (len(ids), CONFIGS[key].vocab_size)
    assert rel_diff(ours, hf_logits(key, ids)) < TOL


@pytest.mark.parametrize("key", KEYS)
def test_incremental_decode_equals_full_forward_at_every_step(key):
    """Prefill a few tokens, then one token at a time past several windows: each step's logits equal the
    full forward's at that position (sliding layers decode from their ring buffer)."""
    W = CONFIGS[key].sliding_window
    ids = prompt(key, 4 * W + 3, seed=1)
    full = hf_logits(key, ids)
    model = runtime(key).model
    cache = model.new_cache(1, capacity=2)          # full layers grow on the way
    pre = 3
    out = [model.forward(torch.tensor([ids[:pre]]), torch.arange(pre)[None], cache, logits="all")[0]]
    for t in range(pre, len(ids)):
        out.append(model.forward(torch.tensor([[ids[t]]]), torch.tensor([[t]]), cache, logits="all")[0])
    assert rel_diff(torch.cat(out), full) < TOL


def test_chunked_prefill_equals_full_forward():
    key = "tiny"
    ids = prompt(key, 45, seed=2)
    model = runtime(key).model
    cache = model.new_cache(1)
    cuts = [0, 11, 12, 30, 45]                        # chunks shorter and longer than the window (8)
    out = [model.forward(torch.tensor([ids[a:b]]), torch.arange(a, b)[None], cache, logits="all")[0]
           for a, b in zip(cuts, cuts[1:])]
    assert rel_diff(torch.cat(out), hf_logits(key, ids)) < TOL


@pytest.mark.parametrize("key", KEYS)
def test_batch_of_unequal_lengths(key):
    """One batched prefill + decode of prompts of different lengths; each sequence equals transformers run
    alone: prompt logits, greedy tokens, and the logits of every generated step."""
    W = CONFIGS[key].sliding_window
    prompts = [prompt(key, n, seed=n) for n in (2, 3 * W + 1, W, W + 1)]
    params = SamplingParams(max_tokens=2 * W, stop_token_ids=(), prompt_logits=True, return_logits=True)
    results = runtime(key).generate(prompts, params)
    model = hf_model(key)[0]
    for p, r in zip(prompts, results):
        assert rel_diff(r.prompt_logits, hf_logits(key, p)) < TOL
        expect = model.generate(torch.tensor([p]), max_new_tokens=2 * W, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(p):].tolist()
        assert r.output_ids == expect and r.finish_reason == "length"
        # the step logits: full forward of prompt + generated[:-1], at positions len(p)-1 ...
        full = hf_logits(key, p + r.output_ids[:-1])[len(p) - 1:]
        assert rel_diff(r.logits, full) < TOL


def test_batched_decode_at_different_positions():
    key = "odd"
    a, b = prompt(key, 17, seed=3), prompt(key, 4, seed=4)
    model = runtime(key).model
    cache = model.new_cache(2)
    ids = torch.zeros(2, 17, dtype=torch.long)
    pos = torch.full((2, 17), -1)
    ids[0], pos[0] = torch.tensor(a), torch.arange(17)
    ids[1, :4], pos[1, :4] = torch.tensor(b), torch.arange(4)
    model.forward(ids, pos, cache, logits="last")
    ext_a, ext_b = prompt(key, 9, seed=5), prompt(key, 9, seed=6)
    for t in range(9):
        step = model.forward(torch.tensor([[ext_a[t]], [ext_b[t]]]), torch.tensor([[17 + t], [4 + t]]), cache)
        assert rel_diff(step[0], hf_logits(key, a + ext_a[:t + 1])[-1]) < TOL
        assert rel_diff(step[1], hf_logits(key, b + ext_b[:t + 1])[-1]) < TOL


def test_parity_with_openai_reference():
    """OpenAI's gpt_oss.torch.model.Transformer, loaded by its own Checkpoint reader from an OpenAI-format
    folder (MXFP4 experts), against this runtime loading the same folder."""
    oai = pytest.importorskip("gpt_oss.torch.model")
    from gpt_oss.torch.weights import Checkpoint
    for key in ("tiny", "odd"):
        folder = converted(key, "openai")
        cfg = oai.ModelConfig(**json.loads((folder / "config.json").read_text()))
        ref = oai.Transformer(cfg, device=torch.device("cpu")).float().eval()
        ck = Checkpoint(str(folder), torch.device("cpu"))
        with torch.no_grad():
            for name, param in ref.named_parameters():
                param.copy_(ck.get(name).float())
        rt = Runtime.from_dir(folder)
        assert rt.network.layers[0].mlp.gate.quant == "mxfp4"
        ids = prompt(key, 3 * CONFIGS[key].sliding_window + 2, seed=7)
        with torch.no_grad():
            theirs = ref(torch.tensor(ids))
        assert rel_diff(rt.prompt_logits(ids), theirs) < TOL, key


def test_hf_mxfp4_checkpoint_against_transformers():
    """An HF MXFP4 checkpoint (packed experts): the network says mxfp4 (W4A16), the runtime dequantizes,
    transformers loads it with Mxfp4Config(dequantize=True)."""
    from transformers import GptOssForCausalLM, Mxfp4Config
    folder = converted("tiny", "hf-mxfp4")
    ref = GptOssForCausalLM.from_pretrained(folder, quantization_config=Mxfp4Config(dequantize=True),
                                            dtype=torch.float32).eval()
    rt = Runtime.from_dir(folder)
    assert rt.network.quant_formats() == ("bf16", "mxfp4")
    ids = prompt("tiny", 30, seed=8)
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0]
    assert rel_diff(rt.prompt_logits(ids), theirs) < TOL


# -- KV cache ---------------------------------------------------------------------------------------------------
def test_sliding_cache_stays_at_window_size():
    key = "tiny"
    net = runtime(key).network
    model = runtime(key).model
    W = CONFIGS[key].sliding_window
    cache = model.new_cache(1, capacity=4)
    ids = prompt(key, 3 * W, seed=9)
    model.forward(torch.tensor([ids]), torch.arange(len(ids))[None], cache)
    for t in range(len(ids), 160):
        model.forward(torch.tensor([[t % 100]]), torch.tensor([[t]]), cache)
        for layer in net.layers:
            slots = cache.layer_slots(layer.index)
            if layer.attention.kind == "sliding":
                assert slots == W, f"sliding layer {layer.index} holds {slots} entries at length {t + 1}"
                assert cache.k[layer.index].shape == (1, 2, W, 32)
            else:
                assert slots >= t + 1
    full_bytes = sum(cache.k[i].nbytes + cache.v[i].nbytes for i in range(4) if i % 2)
    slide_bytes = sum(cache.k[i].nbytes + cache.v[i].nbytes for i in range(4) if i % 2 == 0)
    assert slide_bytes == 2 * 2 * (2 * W * 32 * 4)           # 2 layers x (k, v) x [1, 2, W, 32] fp32
    assert full_bytes >= 2 * 2 * (2 * 160 * 32 * 4)


def _sink_masks(T: int, W: int, S: int) -> dict:
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= i
    sliding = causal & ((i - j < W) | (j < S))
    neg = torch.finfo(torch.float32).min
    to_add = lambda m: torch.zeros(T, T).masked_fill(~m, neg)[None, None]  # noqa: E731
    return {"full_attention": to_add(causal), "sliding_attention": to_add(sliding)}


@pytest.mark.parametrize("key,S", [("tiny", 4), ("odd", 2)])
def test_sink_tokens_keep_first_tokens_visible(key, S):
    """StreamingLLM sink tokens: transformers has no such policy, so the oracle is transformers' forward with a
    hand-built mask (sliding layers see j with i - j < W or j < S). The runtime decodes token by token from a
    ring buffer of S + W entries."""
    c = CONFIGS[key]
    net = network_from_config(c.with_overrides(sink_tokens=S))
    rt = Runtime(net, tensors(key))
    W = c.sliding_window
    ids = prompt(key, 4 * W, seed=10)
    expect = hf_logits(key, ids, attention_mask=_sink_masks(len(ids), W, S))
    cache = rt.model.new_cache(1)
    got = [rt.model.forward(torch.tensor([ids[:5]]), torch.arange(5)[None], cache, logits="all")[0]]
    for t in range(5, len(ids)):
        got.append(rt.model.forward(torch.tensor([[ids[t]]]), torch.tensor([[t]]), cache, logits="all")[0])
        for layer in net.layers:
            if layer.attention.kind == "sliding":
                assert cache.layer_slots(layer.index) == S + W
    got = torch.cat(got)
    assert rel_diff(got, expect) < TOL
    # beyond the window the sink tokens change the result (they are really kept) ...
    assert rel_diff(got[W + S:], hf_logits(key, ids)[W + S:]) > 1e-3
    # ... and a one-shot prefill agrees with the token-by-token decode
    assert rel_diff(rt.prompt_logits(ids), expect) < TOL


# -- negative controls: each quirk, removed, breaks parity ------------------------------------------------------
def _swap_parity(net: Network) -> Network:
    """Sliding window on odd layers instead of even ones (each layer keeps its own weights)."""
    layers = []
    for layer in net.layers:
        other = net.layers[layer.index ^ 1] if (layer.index ^ 1) < net.num_layers else net.layers[layer.index - 1]
        a = other.attention
        attn = dataclasses.replace(layer.attention, kind=a.kind, window=a.window, kernels=a.kernels)
        layers.append(dataclasses.replace(layer, attention=attn))
    return dataclasses.replace(net, layers=tuple(layers))


def _edit_mlps(net: Network, **kw) -> Network:
    return dataclasses.replace(net, layers=tuple(dataclasses.replace(l, mlp=dataclasses.replace(l.mlp, **kw))
                                                 for l in net.layers))


def _no_router_bias(net: Network) -> Network:
    return _edit_mlps_fn(net, lambda m: dataclasses.replace(m, router=dataclasses.replace(m.router, bias=None)))


def _edit_mlps_fn(net, fn):
    return dataclasses.replace(net, layers=tuple(dataclasses.replace(l, mlp=fn(l.mlp)) for l in net.layers))


def _zero_sinks(t: dict) -> dict:
    return {k: (torch.zeros_like(v) if k.endswith("attn.sinks") else v) for k, v in t.items()}


NEGATIVE_CONTROLS = {
    "zeroed sinks": (lambda net: net, _zero_sinks),
    "window on the wrong layer parity": (_swap_parity, lambda t: t),
    "un-clamped SwiGLU": (lambda net: _edit_mlps(net, swiglu_limit=None), lambda t: t),
    "router without bias": (_no_router_bias, lambda t: t),
}


@pytest.mark.parametrize("control", sorted(NEGATIVE_CONTROLS))
def test_negative_controls_break_parity(control):
    key = "tiny"
    edit_net, edit_tensors = NEGATIVE_CONTROLS[control]
    ids = prompt(key, 40, seed=11)
    expect = hf_logits(key, ids)
    good = Runtime(runtime(key).network, tensors(key)).prompt_logits(ids)
    assert rel_diff(good, expect) < TOL
    bad = Runtime(edit_net(runtime(key).network), edit_tensors(tensors(key))).prompt_logits(ids)
    diff = rel_diff(bad, expect)
    assert diff > 1e-3, f"negative control '{control}' should break parity but the logits moved only {diff:.2e}"


def test_network_json_in_engine_dir_is_used(tmp_path):
    """An engine directory's network.json is the definition the runtime executes (here: with sink tokens)."""
    import shutil
    key = "tiny"
    shutil.copytree(hf_model(key)[1], tmp_path / "engine")
    net = network_from_config(CONFIGS[key].with_overrides(sink_tokens=3))
    net.save(tmp_path / "engine" / "network.json")
    rt = Runtime.from_dir(tmp_path / "engine")
    assert rt.network == net
    ids = prompt(key, 30, seed=12)
    expect = hf_logits(key, ids, attention_mask=_sink_masks(30, CONFIGS[key].sliding_window, 3))
    assert rel_diff(rt.prompt_logits(ids), expect) < TOL


def test_nvfp4_w4a4_experts_emulation():
    """A network with NVFP4 (W4A4) experts: packed weights (numerics.nvfp4, one global scale per
    projection) and calibrated input scales. The runtime dequantizes the weights and fake-quantizes each
    expert GEMM's input; the result sits within quantization noise of the same weights without activation
    quant, and decoding token by token still equals the one-shot prefill. Expert weights are scaled by 0.1
    here: at full scale this random model is chaotic (4-bit weights alone move its logits by 60%)."""
    from numerics.nvfp4 import quantize_nvfp4
    from plugins.reference.linear import UnsupportedQuantError
    key = "tiny"
    c = CONFIGS[key]
    t = dict(tensors(key))
    deq = dict(t)
    for i in range(c.num_layers):
        for proj in ("gate", "up", "down"):
            name = f"layers.{i}.moe.{proj}.weight"
            packed = quantize_nvfp4(0.1 * t[name].float().numpy())
            t[name] = packed
            deq[name] = torch.from_numpy(packed.dequantize())
            t[f"layers.{i}.moe.{proj}.input_scale"] = torch.tensor(8.0 / (6 * 448))   # calibrated amax ~8
    net = network_from_config(c, {"experts": "nvfp4"})
    assert net.layers[0].mlp.kernels == ("gemm_nvfp4",)
    rt = Runtime(net, t)
    ids = prompt(key, 3 * c.sliding_window, seed=13)
    w4a4 = rt.prompt_logits(ids)
    w4a16 = Runtime(network_from_config(c), deq).prompt_logits(ids)
    assert 1e-4 < rel_diff(w4a4, w4a16) < 0.05
    cache = rt.model.new_cache(1)
    steps = [rt.model.forward(torch.tensor([[tok]]), torch.tensor([[n]]), cache) for n, tok in enumerate(ids)]
    assert rel_diff(torch.cat(steps), w4a4) < TOL
    del t["layers.0.moe.down.input_scale"]
    with pytest.raises(UnsupportedQuantError, match="layers.0.moe.down.weight: format 'nvfp4' .* input_scale"):
        Runtime(net, t)
