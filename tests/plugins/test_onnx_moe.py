"""The sparse MoE lowering (plugins/onnx/experts.py), the one every quant format goes through, run by ONNX
Runtime against the reference runtime (plugins/reference/moe.py: its own sort and per-expert loop) on the same
tensors, fp32 weights and MXFP4 / NVFP4 experts, on the registry's tiny model and random configs (5-7 experts,
top-3). Parity: max |ours - reference| / max |reference| (quantized experts: the same dequantized values on both
sides, so the same bound up to float accumulation order).

What makes it sparse, checked on the graph itself: no weight initializer is ever a Gather's data (the old layout
gathered each token's k expert matrices: T x k weight copies); each expert has its own [out, in] weights and GEMM.
Negative controls: the same measure notices experts in the wrong order and gate/up swapped (weight edits fed
to the graph only)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
import pytest
import torch

from numerics.mxfp4 import MXFP4Weight, quantize_mxfp4
from numerics.nvfp4 import quantize_nvfp4
from plugins.onnx.graph import ORT_CPU, ORT_CPU_PACKED
from spec.canonical import input_scale_name
from spec.network import MoE
from tests.support.onnx_graphs import CONFIGS, hf_model, network, ort_logits, prompt
from tests.support.runtime import ROOT, rel_diff

TOL = 1e-5


def _quantize(w: torch.Tensor, fmt: str):
    a = w.float().numpy()
    return MXFP4Weight(*quantize_mxfp4(a, "floor")) if fmt == "mxfp4" else quantize_nvfp4(a)


@functools.cache
def tensors(key: str, fmt: str) -> dict:
    """The canonical tensors of model `key`, experts quantized to `fmt` (W4A4 NVFP4 with calibrated-like
    activation scales: max |x| / (6 * 448) from the fp32 model's own hidden states is not needed for parity, any
    positive scale quantizes both sides alike)."""
    from checkpoint.convert import load_canonical
    with load_canonical(hf_model(key)[1]) as ck:
        out = {name: ck.get(name) for name in ck.names()}
    if fmt == "bf16":
        return out
    for layer in network(key).layers:
        m = layer.mlp
        for lin in (m.gate, m.up, m.down):
            out[lin.weight] = _quantize(out[lin.weight], fmt)
            if fmt == "nvfp4":
                out[input_scale_name(lin.weight)] = torch.tensor(0.5 / 448.0)
    return out


@functools.cache
def quant_network(key: str, fmt: str):
    net = network(key)
    if fmt == "bf16":
        return net

    def requant(m: MoE) -> MoE:
        return dataclasses.replace(m, gate=dataclasses.replace(m.gate, quant=fmt),
                                   up=dataclasses.replace(m.up, quant=fmt), down=dataclasses.replace(m.down, quant=fmt))
    return dataclasses.replace(net, layers=tuple(dataclasses.replace(layer, mlp=requant(layer.mlp))
                                                 for layer in net.layers))


def export(key: str, fmt: str, edit=None, lowering: str = ORT_CPU) -> str:
    from plugins.onnx.export import export_onnx
    t = tensors(key, fmt) if edit is None else edit(dict(tensors(key, fmt)), network(key))
    path = ROOT / f"moe-{key}-{fmt}-{edit.__name__ if edit else 'ok'}-{lowering}.onnx"
    export_onnx(quant_network(key, fmt), t, path, lowering=lowering)
    return str(path)


@functools.cache
def reference(key: str, fmt: str):
    from runtime import Runtime
    return Runtime(quant_network(key, fmt), tensors(key, fmt))


# FP4 blocks need in_features % 32 == 0: gqa3 / gqa5 (hidden 48 / 40) run unquantized, odd and mha quantized
CASES = [(key, "bf16") for key in ("tiny", "gqa3", "gqa5")] + [(key, fmt) for key in ("tiny", "odd", "mha")
                                                              for fmt in ("mxfp4", "nvfp4")]


@pytest.mark.parametrize("key,fmt", CASES)
def test_moe_graph_matches_the_reference_runtime(key, fmt):
    ids = prompt(key, 24, seed=3)
    want = reference(key, fmt).prompt_logits(ids)
    got = ort_logits(export(key, fmt), ids)
    assert rel_diff(got, want) < TOL, rel_diff(got, want)


@pytest.mark.parametrize("key,fmt", [(key, fmt) for key in ("tiny", "odd") for fmt in ("mxfp4", "nvfp4")])
def test_packed_fp4_experts_decoded_at_run_time_match_the_reference_runtime(key, fmt):
    """The "onnxruntime-cpu-packed" lowering: FP4 experts stay packed (uint8 [E, out, in/2] + e4m3 scales, the
    checkpoint's bytes), decoded per routed expert inside an If on its row count. Prefill and one-token decode
    (most experts unrouted) equal the reference runtime; no float expert weight is in the graph or folded by
    ONNX Runtime (its optimized model holds no float initializer of an expert's size)."""
    import onnxruntime as ort
    ids = prompt(key, 24, seed=3)
    path = export(key, fmt, lowering=ORT_CPU_PACKED)
    ref = reference(key, fmt)
    assert rel_diff(ort_logits(path, ids), ref.prompt_logits(ids)) < TOL
    assert rel_diff(ort_logits(path, ids[:1]), ref.prompt_logits(ids[:1])) < TOL
    c = CONFIGS[key]
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(ROOT / f"opt-{key}-{fmt}.onnx")
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    model = onnx.load(opts.optimized_model_filepath)
    expert_elems = c.intermediate_size * c.hidden_size
    floats = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
              and int(np.prod(t.dims)) >= expert_elems and "experts" not in t.name and "moe" in t.name]
    assert floats == [], floats
    packed = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) == 3]
    assert len(packed) == 2 * 3 * c.num_layers       # codes and block-scale bytes of gate, up, down, as stored
    assert all(t.dims[0] == c.num_experts for t in packed)
    codes = [t for t in packed if t.name.endswith(".packed")]
    assert len(codes) == 3 * c.num_layers and all(2 * t.dims[2] in (c.hidden_size, c.intermediate_size)
                                                  for t in codes)                       # two codes a byte


def test_no_expert_weight_is_gathered_and_each_expert_has_its_own_gemm():
    key = "gqa5"
    c = CONFIGS[key]
    model = onnx.load(export(key, "bf16"))
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    matrices = {n for n, d in inits.items() if len(d) >= 2 and not n.endswith("bias")}   # biases: [E, out] rows
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in matrices}
    rope = {n for n in gathered if n.startswith("rope")}                    # cos/sin rows by position
    assert gathered - rope == {network(key).embedding.weight}, gathered     # and the token embedding: rows only
    per_expert = [n for n, d in inits.items() if ".expert" in n and len(d) == 2]
    assert len(per_expert) == 2 * c.num_layers * c.num_experts          # gate|up and down, one per expert
    assert not [n for n, d in inits.items() if len(d) == 3 and d[0] == c.num_experts]   # no [E, out, in] left


def test_a_4000_token_prompt_runs_and_matches_on_tiny():
    """The prompt that asked ONNX Runtime for 33.5 GB when each token's experts were gathered: now [T*k, in]
    activations. Checked at the last positions against the reference runtime."""
    key, T = "tiny", 4000
    assert CONFIGS[key].max_position_embeddings >= T
    ids = prompt(key, T, seed=11)
    got = ort_logits(export(key, "bf16"), ids)
    want = reference(key, "bf16").prompt_logits(ids)
    assert got.shape == want.shape == (T, CONFIGS[key].vocab_size)
    assert rel_diff(got[-64:], want[-64:]) < TOL
    assert rel_diff(got, want) < TOL


# -- negative controls: weight edits the graph sees and the reference does not --------------------------------
def experts_rotated(t: dict, net) -> dict:
    """Expert e's down projection replaced by expert e+1's: experts in the wrong order."""
    for layer in net.layers:
        name = layer.mlp.down.weight
        t[name] = torch.roll(t[name], 1, dims=0)
    return t


def gate_up_swapped(t: dict, net) -> dict:
    for layer in net.layers:
        m = layer.mlp
        t[m.gate.weight], t[m.up.weight] = t[m.up.weight], t[m.gate.weight]
        if m.gate.bias:
            t[m.gate.bias], t[m.up.bias] = t[m.up.bias], t[m.gate.bias]
    return t


@pytest.mark.parametrize("edit", [experts_rotated, gate_up_swapped])
def test_wrong_expert_order_or_swapped_gate_up_is_noticed(edit):
    key = "gqa3"
    ids = prompt(key, 24, seed=3)
    want = reference(key, "bf16").prompt_logits(ids)
    got = ort_logits(export(key, "bf16", edit), ids)
    assert rel_diff(got, want) > 100 * TOL, rel_diff(got, want)
