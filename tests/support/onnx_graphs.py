"""Helpers for the ONNX graph tests: export a tiny random model (transformers-built, runtime_helpers), run a
prompt through ONNX Runtime, and count a step's FLOPs from the graph's GEMM shapes."""

from __future__ import annotations

import functools

import numpy as np
import torch

import tests.support.runtime as runtime_helpers
from spec.registry.models import ModelConfig
from tests.support.runtime import ROOT

# Configs nobody tuned the exporter to: odd layer counts, GQA 3:1 and 5:1, windows smaller than the prompts,
# 5-7 experts with top-3, YaRN factors and thetas off the defaults.
CONFIGS = dict(runtime_helpers.CONFIGS)     # a copy: the runtime tests parametrize over theirs
CONFIGS["gqa3"] = ModelConfig(
    name="gqa3", num_layers=5, hidden_size=48, head_dim=8, num_q_heads=6, num_kv_heads=2, vocab_size=257,
    mlp="moe", intermediate_size=24, num_experts=5, experts_per_token=3, sliding_window=3,
    rope_theta=10000.0, rope_scaling_factor=16.0, rope_original_max_position=64, max_position_embeddings=512,
    eos_token_ids=(3,))
CONFIGS["gqa5"] = ModelConfig(
    name="gqa5", num_layers=3, hidden_size=40, head_dim=12, num_q_heads=10, num_kv_heads=2, vocab_size=131,
    mlp="moe", intermediate_size=20, num_experts=7, experts_per_token=3, sliding_window=4,
    rope_scaling_factor=2.0, rope_original_max_position=32, swiglu_limit=5.0, max_position_embeddings=256)


@functools.cache
def hf_model(key: str):
    """(transformers GptOssForCausalLM fp32, its saved folder), as runtime_helpers.hf_model, for CONFIGS here."""
    if key in runtime_helpers.CONFIGS:
        return runtime_helpers.hf_model(key)
    from transformers import GptOssForCausalLM
    torch.manual_seed(0)
    model = GptOssForCausalLM(runtime_helpers.hf_config(CONFIGS[key]))
    runtime_helpers.randomize_(model, seed=sum(map(ord, key)))
    model = model.float().eval()
    out = ROOT / f"hf-{key}"
    model.save_pretrained(out)
    return model, out


def prompt(key: str, length: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIGS[key].vocab_size, (length,), generator=g).tolist()


@functools.cache
def network(key: str):
    from runtime import Runtime
    return Runtime.from_dir(hf_model(key)[1]).network


@functools.cache
def exported(key: str, fault: str | None = None, lowering: str = "tensorrt") -> str:
    """The graph of model `key` in `lowering` (plugins.onnx.graph.LOWERINGS), or of its network broken by one of
    regression.faults' NETWORK_FAULTS."""
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from regression.faults import NETWORK_FAULTS
    net = network(key) if fault is None else NETWORK_FAULTS[fault](network(key))
    path = ROOT / f"onnx-{key}-{fault or 'ok'}-{lowering}.onnx"
    with load_canonical(hf_model(key)[1]) as ck:
        export_onnx(net, ck, path, lowering=lowering)
    return str(path)


@functools.cache
def session(path: str):
    import onnxruntime as ort
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def empty_feeds(sess, batch: int = 1) -> dict[str, np.ndarray]:
    feeds = {}
    for i in sess.get_inputs():
        if not i.name.startswith("past_"):
            continue
        shape = [batch if d == "batch" else 0 if isinstance(d, str) else d for d in i.shape]
        feeds[i.name] = np.full(shape, -1, np.int64) if i.type == "tensor(int64)" else np.zeros(shape, np.float32)
    return feeds


def ort_logits(path: str, ids) -> torch.Tensor:
    """float32 [len(ids), vocab]: one prefill from an empty cache."""
    sess = session(path)
    feeds = empty_feeds(sess)
    feeds["input_ids"] = np.array([list(ids)], np.int64)
    feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    return torch.from_numpy(sess.run(["logits"], feeds)[0][0])


def gemm_shapes(path: str, feeds: dict) -> list[tuple[str, str, tuple, tuple]]:
    """Run the graph once with every GEMM's operands exposed; -> (op, node name, shape A, shape B) per GEMM."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    gemms = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    wanted = []
    for n in gemms:
        for x in n.input[:2]:
            if x not in wanted:
                wanted.append(x)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    extra = [x for x in wanted if x not in inits]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in extra)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(extra, sess.run(extra, feeds)))
    shape = {**inits, **{k: v.shape for k, v in values.items()}}
    return [(n.op_type, n.name, tuple(shape[n.input[0]]), tuple(shape[n.input[1]])) for n in gemms]


def gemm_flops(op: str, a: tuple, b: tuple) -> int:
    """2 * multiply-adds. Gemm here is always A [M, K] x B[N, K]^T; MatMul broadcasts leading dims."""
    if op == "Gemm":
        return 2 * a[0] * a[1] * b[0]
    lead = np.broadcast_shapes(a[:-2], b[:-2])
    return 2 * int(np.prod(lead, dtype=np.int64)) * a[-2] * a[-1] * b[-1]
