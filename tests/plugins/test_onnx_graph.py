"""The ONNX graph exported from the network definition, run by ONNX Runtime, against transformers'
GptOssForCausalLM and the reference runtime (fp32; parity: max |ours - theirs| / max |theirs| < 1e-5).
Negative controls: the graph of a network with each gpt-oss quirk broken (regression.faults' network edits) is
caught by the same measure."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from regression.faults import NETWORK_FAULTS, unclamp_swiglu
from tests.support.onnx_graphs import (
    CONFIGS,
    empty_feeds,
    exported,
    gemm_flops,
    gemm_shapes,
    hf_model,
    network,
    ort_logits,
    prompt,
    session,
)
from tests.support.runtime import ROOT, rel_diff

TOL = 1e-5
KEYS = ["tiny", "odd", "mha", "gqa3", "gqa5"]


@functools.cache
def reference(key: str):
    from runtime import Runtime
    return Runtime.from_dir(hf_model(key)[1])


@functools.cache
def onnx_runtime(key: str):
    from runtime.executors import load_runtime
    return load_runtime(hf_model(key)[1], "onnxruntime")


def hf_logits(key: str, ids) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(key)[0](torch.tensor([list(ids)])).logits[0]


# TensorRT's lowering and ONNX Runtime's CPU one (what the executor exports: the experts' rows by one Split)
LOWERINGS = ["tensorrt", "onnxruntime-cpu"]


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("key", KEYS)
def test_prompt_logits_match_transformers_and_reference(key, lowering):
    ids = prompt(key, 3 * CONFIGS[key].sliding_window + 4)          # several windows long
    ours = ort_logits(exported(key, None, lowering), ids)
    assert ours.shape == (len(ids), CONFIGS[key].vocab_size)
    assert rel_diff(ours, hf_logits(key, ids)) < TOL
    assert rel_diff(ours, reference(key).prompt_logits(ids)) < TOL


@pytest.mark.parametrize("key", ["odd", "gqa5"])
def test_greedy_continuation_past_the_window_is_identical(key):
    from runtime import SamplingParams
    W = CONFIGS[key].sliding_window
    ids = prompt(key, W + 2, seed=3)
    params = SamplingParams(max_tokens=2 * W + 2, stop_token_ids=())
    [ours] = onnx_runtime(key).generate([ids], params)
    [ref] = reference(key).generate([ids], params)
    # transformers' oracle: a full forward over the whole sequence per token (no cache of its own)
    seq = list(ids)
    for _ in range(params.max_tokens):
        seq.append(int(hf_logits(key, seq)[-1].argmax()))
    assert ours.output_ids == ref.output_ids == seq[len(ids):]


def test_batched_prompts_of_unequal_length_equal_one_by_one():
    """Right-padded batches (the generate loop's convention) are rolled to left padding inside the executor."""
    from runtime import SamplingParams
    key = "gqa3"
    prompts = [prompt(key, n, seed=n) for n in (9, 2, 5)]
    params = SamplingParams(max_tokens=7, stop_token_ids=(), prompt_logits=True)
    rt = onnx_runtime(key)
    batch = rt.generate(prompts, params)
    for p, b in zip(prompts, batch):
        [one] = rt.generate([p], params)
        assert b.output_ids == one.output_ids
        assert rel_diff(b.prompt_logits, one.prompt_logits) < TOL


@pytest.mark.parametrize("fault", list(NETWORK_FAULTS))
def test_each_broken_quirk_is_caught(fault):
    key = "gqa5"          # swiglu_limit 5: the clamp bites on these random weights
    ids = prompt(key, 4 * CONFIGS[key].sliding_window, seed=5)
    truth = hf_logits(key, ids)
    assert rel_diff(ort_logits(exported(key), ids), truth) < TOL
    assert rel_diff(ort_logits(exported(key, fault), ids), truth) > 100 * TOL


def _decode_feeds(key: str, past: int) -> dict:
    """A decode step (1 token) after a prefill of `past` tokens, as ONNX Runtime would be fed it."""
    sess = session(exported(key))
    feeds = empty_feeds(sess)
    ids = prompt(key, past + 1, seed=7)
    feeds.update(input_ids=np.array([ids[:past]], np.int64), position_ids=np.arange(past, dtype=np.int64)[None])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, feeds)))
    step = {k: outs["present_" + k.removeprefix("past_")] for k in feeds if k.startswith("past_")}
    step.update(input_ids=np.array([[ids[past]]], np.int64), position_ids=np.array([[past]], np.int64))
    return step


@pytest.mark.parametrize("key", ["tiny", "gqa3"])
def test_decode_step_flops_match_active_parameters(key):
    """FLOPs of one decode step's weight GEMMs, from the graph's own shapes, = 2 x the planner's active
    parameters (embedding excluded) within 10%: only the top-k experts are multiplied."""
    from spec.params import active_params
    c = CONFIGS[key]
    shapes = gemm_shapes(exported(key), _decode_feeds(key, 2 * c.sliding_window + 1))
    weight_flops = sum(gemm_flops(op, a, b) for op, name, a, b in shapes
                       if not name.startswith(("scores", "attn_v")))
    active = active_params(c)
    assert abs(weight_flops / 2 - active) / active < 0.10, (weight_flops / 2, active)
    # one GEMM per expert and projection (plugins/onnx/experts.py), weights [out, in] never gathered per token;
    # the k routed pairs are their only rows
    experts = [(name, a, b) for op, name, a, b in shapes if ".expert" in name]
    assert len(experts) == 2 * c.num_layers * c.num_experts
    assert all(len(b) == 2 for name, a, b in experts)
    for i in range(c.num_layers):
        for proj in ("gate", "down"):
            rows = [a[0] for name, a, b in experts if name.startswith(f"layers.{i}.") and f".{proj}" in name]
            assert sum(rows) == c.experts_per_token, (i, proj, rows)


def test_cache_has_fixed_capacity_and_rings_hold_exactly_window_rows():
    """Full layers: kv_capacity rows, written in place (present_* is past_*'s buffer); sliding layers: a ring of
    W rows + 1 scratch row, holding exactly the last W positions after a prompt and decode steps past the wrap."""
    from plugins.onnx.kv_cache import DEFAULT_MAX_CHUNK, SCRATCH_ROWS
    key = "odd"
    net = network(key)
    W = CONFIGS[key].sliding_window
    capacity = CONFIGS[key].max_position_embeddings + DEFAULT_MAX_CHUNK
    sess = session(exported(key))
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    for layer in net.layers:
        rows = shapes[f"past_key_{layer.index}"][2]
        assert rows == (W + SCRATCH_ROWS if layer.attention.kind == "sliding" else capacity)
    ex = onnx_runtime(key).model
    cache = ex.new_cache(1)
    full = [f"past_key_{layer.index}" for layer in net.layers if layer.attention.kind == "full"]
    buffers = {name: cache.tensors[name] for name in cache.tensors}
    ids = torch.tensor([prompt(key, 4 * W)])
    ex.forward(ids, torch.arange(4 * W)[None], cache)
    for step in range(3):
        ex.forward(ids[:, :1], torch.tensor([[4 * W + step]]), cache)
    for name, t in cache.tensors.items():
        assert t is buffers[name] and t.shape == buffers[name].shape       # no cache replaced or grown
    n = 4 * W + 3
    assert all(np.abs(cache.tensors[name][0, :, :n]).min(axis=-1).max() > 0 for name in full)  # written in place
    assert all(not cache.tensors[name][0, :, n:].any() for name in full)
    ring = cache.tensors[f"past_window{W}_pos"][0].tolist()
    assert sorted(ring[:W]) == list(range(n - W, n)) and ring[W:] == [-1]
    assert ring[:W] == [p for p in sorted(range(n - W, n), key=lambda p: p % W)]      # row = position mod W


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_graph_passes_onnx_checker_and_strict_shape_inference(dtype):
    """Every compute dtype TensorRT may build from: ONNX's full checker and strict typed shape inference."""
    import onnx

    from checkpoint.convert import load_canonical
    from plugins.onnx.export import build_graph
    with load_canonical(hf_model("odd")[1]) as ck:
        model = build_graph(network("odd"), ck, dtype).model()
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    logits = [o for o in inferred.graph.output if o.name == "logits"][0].type.tensor_type
    assert logits.elem_type == onnx.TensorProto.FLOAT


def test_dense_mlp_network_matches_the_reference_runtime():
    """The dense variant (20b-dense's layout; transformers has no dense gpt-oss, so the reference runtime is
    the oracle), with random canonical tensors, through a prefill and decode steps past the window."""
    from plugins.onnx.export import export_onnx
    from runtime import Runtime, SamplingParams
    from runtime.executors.onnxruntime import OnnxRuntimeExecutor
    from spec.canonical import canonical_shapes
    from spec.network import network_from_config
    from spec.registry.models import ModelConfig
    c = ModelConfig(name="dense-rand", num_layers=3, hidden_size=32, head_dim=8, num_q_heads=4, num_kv_heads=2,
                    vocab_size=97, mlp="dense", intermediate_size=40, sliding_window=3, rope_scaling_factor=4.0,
                    rope_original_max_position=64, max_position_embeddings=256, swiglu_limit=1.0)
    g = torch.Generator().manual_seed(11)
    tensors = {n: (1 + 0.2 * torch.randn(s, generator=g)) if "norm" in n or n == "norm.scale"
               else 0.3 * torch.randn(s, generator=g) for n, s in canonical_shapes(c).items()}
    net = network_from_config(c, dtype="float32")
    path = export_onnx(net, tensors, ROOT / "dense-rand.onnx").path
    ref = Runtime(net, tensors)
    ours = Runtime(net, None, executor=OnnxRuntimeExecutor(net, path))
    ids = torch.randint(0, c.vocab_size, (11,), generator=g).tolist()
    assert rel_diff(ours.prompt_logits(ids), ref.prompt_logits(ids)) < TOL
    params = SamplingParams(max_tokens=8, stop_token_ids=())
    assert ours.generate([ids], params)[0].output_ids == ref.generate([ids], params)[0].output_ids
    unclamped = export_onnx(unclamp_swiglu(net), tensors, ROOT / "dense-rand-bad.onnx").path
    bad = Runtime(net, None, executor=OnnxRuntimeExecutor(net, unclamped))
    assert rel_diff(bad.prompt_logits(ids), ref.prompt_logits(ids)) > 100 * TOL


@pytest.mark.parametrize("key", ["odd", "mha"])
def test_float16_graph_runs_within_half_precision(key):
    """The fp16 graph (a TensorRT compute dtype) on ONNX Runtime: fp16 weights and activations, attention,
    norms and routing in fp32, within 1e-2 of the fp32 reference (the reference runtime's own fp16 is
    further off). ONNX Runtime's CPU provider has no bf16 Gemm, so bf16 graphs are only checked above."""
    import onnxruntime as ort

    from checkpoint.convert import load_canonical
    from plugins.onnx.export import build_graph
    with load_canonical(hf_model(key)[1]) as ck:
        model = build_graph(network(key), ck, "float16").model()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in empty_feeds(sess).items()}
    ids = prompt(key, 3 * CONFIGS[key].sliding_window)
    feeds.update(input_ids=np.array([ids]), position_ids=np.arange(len(ids))[None])
    got = torch.from_numpy(sess.run(["logits"], feeds)[0][0])
    assert rel_diff(got, reference(key).prompt_logits(ids)) < 1e-2


@pytest.mark.parametrize("sinks", [1, 3])
def test_streaming_sink_tokens_match_the_reference_runtime(sinks):
    """StreamingLLM sink tokens on sliding layers (the leak's policy; transformers has none, so the reference
    runtime is the oracle): prompt logits, decode far past the window, batched prompts of unequal length."""
    import dataclasses

    from plugins.onnx.export import export_onnx
    from runtime import Runtime, SamplingParams
    from runtime.executors.onnxruntime import OnnxRuntimeExecutor
    from spec.canonical import canonical_shapes
    from spec.network import network_from_config
    c = dataclasses.replace(CONFIGS["gqa3"], name=f"sinks{sinks}", sink_tokens=sinks, num_layers=3)
    g = torch.Generator().manual_seed(12)
    tensors = {n: (1 + 0.2 * torch.randn(s, generator=g)) if "norm" in n
               else 0.3 * torch.randn(s, generator=g) for n, s in canonical_shapes(c).items()}
    net = network_from_config(c, dtype="float32")
    path = export_onnx(net, tensors, ROOT / f"sinks{sinks}.onnx").path
    ex = OnnxRuntimeExecutor(net, path)
    ref, ours = Runtime(net, tensors), Runtime(net, None, executor=ex)
    ids = torch.randint(0, c.vocab_size, (4 * c.sliding_window,), generator=g).tolist()
    assert rel_diff(ours.prompt_logits(ids), ref.prompt_logits(ids)) < TOL
    params = SamplingParams(max_tokens=3 * c.sliding_window, stop_token_ids=(), return_logits=True)
    prompts = [ids[:2], ids[:7], ids]
    expected = ref.generate(prompts, params)
    # prefill in one call, and in chunks shorter than the window and longer (a chunk's tokens more than W
    # behind its last go to the scratch row): the same tokens and logits, decoding 3 windows past the wrap
    for chunk in (None, c.sliding_window - 1, c.sliding_window + 2):
        chunked = Runtime(net, None, executor=OnnxRuntimeExecutor(net, path, max_chunk=chunk))
        for a, b in zip(chunked.generate(prompts, params), expected):
            assert a.output_ids == b.output_ids, chunk
            assert rel_diff(a.logits, b.logits) < TOL, chunk
    # negative control: a ring row off by one in the modulus (position mod W - 1) is noticed
    import onnx

    from regression.faults import ring_modulus_short
    bad_path = ROOT / f"sinks{sinks}-ring.onnx"
    onnx.save(ring_modulus_short(onnx.load(str(path))), str(bad_path))
    [bad] = Runtime(net, None, executor=OnnxRuntimeExecutor(net, bad_path)).generate([ids], params)
    assert rel_diff(bad.logits, expected[2].logits) > 100 * TOL
    # negative control: the same weights exported without sink tokens decode differently past the window
    plain = network_from_config(dataclasses.replace(c, sink_tokens=0), dtype="float32")
    no_sinks = Runtime(plain, None, executor=OnnxRuntimeExecutor(plain, export_onnx(
        plain, tensors, ROOT / f"sinks{sinks}-off.onnx").path))
    [off] = no_sinks.generate([ids], params)
    assert rel_diff(off.logits, ref.generate([ids], params)[0].logits) > 100 * TOL
    sliding = [i for i in ex.session.get_inputs() if "sink" in i.name]
    assert sliding and all(i.shape[-1] == c.sliding_window + sinks + 1 for i in sliding)     # + scratch row
    for layer in net.layers:
        rows = ex.new_cache(1).tensors[f"past_key_{layer.index}"].shape[2]
        assert rows == (c.sliding_window + sinks + 1 if layer.attention.kind == "sliding" else
                        c.max_position_embeddings + 512)


@pytest.mark.parametrize("key", ["gqa3", "odd"])
def test_cpu_lowering_decodes_chunked_ragged_batches_exactly(key):
    """ONNX Runtime's lowering as the executor runs it (fixed-capacity in-place cache) computes what transformers
    and the reference runtime do: prompt logits; prefill in chunks shorter and longer than the window, a batch
    of unequal lengths (rows that sit a chunk out), decode two windows past the ring's wrap. Negative control:
    the same weights with the sinks dropped (regression.faults' drop_sinks) are noticed."""
    from runtime import Runtime, SamplingParams
    from runtime.executors.onnxruntime import OnnxRuntimeExecutor
    c, net = CONFIGS[key], network(key)
    path = exported(key, None, "onnxruntime-cpu")
    W = c.sliding_window
    ids = prompt(key, 3 * W + 4, seed=8)
    assert rel_diff(ort_logits(path, ids), hf_logits(key, ids)) < TOL
    params = SamplingParams(max_tokens=2 * W + 3, stop_token_ids=(), return_logits=True)
    prompts = [ids[:2], ids[:W + 1], ids]
    expected = reference(key).generate(prompts, params)
    for chunk in (W - 1, W + 2, None):
        ours = Runtime(net, None, executor=OnnxRuntimeExecutor(net, path, max_chunk=chunk))
        for a, b in zip(ours.generate(prompts, params), expected):
            assert a.output_ids == b.output_ids, chunk
            assert rel_diff(a.logits, b.logits) < TOL, chunk
    bad_path = exported(key, "drop_sinks", "onnxruntime-cpu")
    [off] = Runtime(net, None, executor=OnnxRuntimeExecutor(net, bad_path)).generate([ids], params)
    assert rel_diff(off.logits, expected[2].logits) > 100 * TOL
    assert rel_diff(ort_logits(bad_path, ids), hf_logits(key, ids)) > 100 * TOL
