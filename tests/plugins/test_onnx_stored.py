"""The packed CPU lowering's bf16 weights (plugins/onnx/stored.py): the embedding, attention, routers and head of a
bf16 checkpoint stay bf16 in the graph and are widened to fp32 at run time, in row blocks, so ONNX Runtime holds
half the bytes of the fp32 graph. Oracle: the reference runtime on the same (bf16-rounded) tensors; and ONNX
Runtime's own optimized model, which must not hold those weights folded back into fp32. Control: an fp32
checkpoint's weights stay fp32 (nothing is rounded to bf16)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch

from plugins.onnx.graph import ORT_CPU, ORT_CPU_PACKED
from tests.plugins.test_onnx_moe import quant_network, tensors
from tests.support.onnx_graphs import CONFIGS, ort_logits, prompt
from tests.support.runtime import ROOT, rel_diff

TOL = 1e-5
KEY, FMT = "tiny", "mxfp4"


@functools.cache
def bf16_tensors() -> dict:
    """tiny's tensors with every dense float matrix (embedding, attention, router, head) stored as bf16."""
    return {n: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.dim() == 2 and v.is_floating_point()
                else v) for n, v in tensors(KEY, FMT).items()}


def _export(t: dict, lowering: str, tag: str) -> str:
    from plugins.onnx.export import export_onnx
    path = ROOT / f"stored-{tag}-{lowering}.onnx"
    export_onnx(quant_network(KEY, FMT), t, path, lowering=lowering)
    return str(path)


def _reference_logits(t: dict, ids) -> torch.Tensor:
    from runtime import Runtime
    return Runtime(quant_network(KEY, FMT), t).prompt_logits(ids)


def test_bf16_weights_stay_bf16_and_match_the_reference_runtime(monkeypatch):
    import onnxruntime as ort

    import plugins.onnx.stored as stored
    net = quant_network(KEY, FMT)
    # small blocks, so the head and the attention's merged projections run as several Gemms (bias sliced per block)
    monkeypatch.setattr(stored, "BLOCK_BYTES", 4 * net.lm_head.in_features * 7)
    t = bf16_tensors()
    path = _export(t, ORT_CPU_PACKED, "bf16")
    ids = prompt(KEY, 24, seed=5)
    want = _reference_logits(t, ids)
    assert rel_diff(ort_logits(path, ids), want) < TOL
    assert rel_diff(ort_logits(path, ids[:1]), want[:1]) < TOL
    model = onnx.load(path)
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    dense = [net.embedding.weight, net.lm_head.weight] + [layer.attention.out.weight for layer in net.layers]
    assert all(kinds[n] == onnx.TensorProto.BFLOAT16 for n in dense), {n: kinds.get(n) for n in dense}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm" and n.name.startswith(net.lm_head.weight)]
    assert len(gemms) == -(-net.vocab_size // 7)                    # one per block of 7 rows
    # ONNX Runtime folds constants when a session starts: none of those weights may come back as fp32
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(ROOT / "stored-bf16-optimized.onnx")
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath)
    widths = {CONFIGS[KEY].hidden_size, net.layers[0].attention.out.in_features}    # the stored weights' in
    floats = [i.name for i in optimized.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
              and len(i.dims) == 2 and i.dims[1] in widths and "bias" not in i.name]
    assert floats == [], floats


@pytest.mark.parametrize("lowering", [ORT_CPU_PACKED, ORT_CPU])
def test_fp32_weights_are_never_rounded_to_bf16(lowering):
    t = tensors(KEY, FMT)                              # the fp32 checkpoint
    model = onnx.load(_export(t, lowering, "fp32"))
    assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.BFLOAT16]
    ids = prompt(KEY, 12, seed=6)
    assert rel_diff(ort_logits(_export(t, lowering, "fp32"), ids), _reference_logits(t, ids)) < TOL


def test_the_fp32_lowering_widens_bf16_weights_at_export():
    """Control for the first test: the fp32 lowering writes the same bf16 weights as fp32 initializers."""
    model = onnx.load(_export(bf16_tensors(), ORT_CPU, "bf16"))
    assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.BFLOAT16]
