"""The GPU-precision graph (bf16, fp16 where the SM lacks bf16: spec.capabilities.graph_dtype) against
transformers' fp32 GptOssForCausalLM, within a stated bound; the fp32 islands it keeps are what holds it there.

The bound: median over prompt positions of max_v |ours - theirs| / max |theirs| < 4 * u * L, with u the unit
roundoff of the compute dtype (bf16 2^-8, fp16 2^-11) and L the number of layers. Why: each layer adds to the
fp32-accurate residual stream the output of GEMMs whose weights and inputs are each rounded once to the
compute dtype (relative error <= u each, so ~2u on a product) and whose result and residual sum are rounded
once more (u/2 each): about 3u of relative error per layer, accumulating at most linearly through L layers
(plus the lm_head's ~2u, under the slack of the 4). The median, because a position whose largest logits
nearly tie may exceed it by amplification; the maximum is reported in the message.

bf16 graphs run on ONNX Runtime through tests/support/bf16.py's emulation (its CPU provider has no bf16
GEMMs): every op in fp32, every bf16 value rounded where it is produced, as the GPU's kernels do. fp16
graphs run on ONNX Runtime as they are (and through the same emulation, which agrees).

Negative control: the islands matter where values are large, as gpt-oss's residual stream is (norms in the
thousands). On the same model with its embedding scaled to such magnitudes (transformers runs the scaled
weights too), the fp16 graph stays within the bound, and the same graph with RMSNorm's fp32 statistic
removed (x^2 and its mean rounded to fp16, an edit of the emulation, never a switch in the exporter)
overflows and fails it. (Removing the attention island, scores and sink softmax, moved the error by under
5% on these random models: their scores are small. It is kept because the sink logit column and the -1e30
mask need the fp32 range, not because this test sees it.)
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch

from tests.support.bf16 import emulate, nodes_named, unit_roundoff
from tests.support.onnx_graphs import CONFIGS, empty_feeds, hf_model, network, prompt

KEYS = ["odd", "gqa3", "gqa5"]
MASSIVE = 4000.0        # embedding scale: residual entries in the hundreds to thousands, as in gpt-oss


def bound(dtype: str, layers: int) -> float:
    return 4 * unit_roundoff(dtype) * layers


@functools.cache
def source(key: str, massive: bool = False):
    """(transformers model fp32, its folder): the test model, or a copy with its embedding scaled by MASSIVE."""
    model, folder = hf_model(key)
    if not massive:
        return model, folder
    import copy

    from tests.support.runtime import ROOT
    big = copy.deepcopy(model)
    with torch.no_grad():
        big.model.embed_tokens.weight.mul_(MASSIVE)
    out = ROOT / f"hf-{key}-massive"
    big.save_pretrained(out)
    return big, out


@functools.cache
def graph(key: str, dtype: str, massive: bool = False, island_gemm: str = "float32") -> onnx.ModelProto:
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import build_graph
    with load_canonical(source(key, massive)[1]) as ck:
        return build_graph(network(key), ck, dtype, island_gemm=island_gemm).model()


def run(model: onnx.ModelProto, ids: list[int], half) -> np.ndarray:
    """Prompt logits [len(ids), vocab] from an empty cache; cache inputs in the model's own float type."""
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: v.astype(half) if v.dtype == np.float32 else v for k, v in empty_feeds(sess).items()}
    feeds.update(input_ids=np.array([ids], np.int64), position_ids=np.arange(len(ids), dtype=np.int64)[None])
    return sess.run(["logits"], feeds)[0][0]


def errors(got: np.ndarray, key: str, ids: list[int], massive: bool = False) -> np.ndarray:
    """Per position: max |got - transformers| / max |transformers| (transformers fp32, same weights)."""
    with torch.no_grad():
        ref = source(key, massive)[0](torch.tensor([ids])).logits[0].numpy()
    return np.abs(got.astype(np.float64) - ref).max(-1) / np.abs(ref).max()


def prompt_ids(key: str) -> list[int]:
    return prompt(key, 3 * CONFIGS[key].sliding_window + 4, seed=3)     # several windows long


def check(err: np.ndarray, limit: float) -> str:
    return f"median {np.median(err):.2e}, max {err.max():.2e}, bound {limit:.2e}"


@pytest.mark.parametrize("key", KEYS)
def test_bf16_graph_within_bound_of_transformers(key):
    ids = prompt_ids(key)
    model = graph(key, "bfloat16")
    assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in model.graph.initializer)
    err = errors(run(emulate(model), ids, np.float32), key, ids)
    limit = bound("bfloat16", CONFIGS[key].num_layers)
    assert np.median(err) < limit, check(err, limit)
    # and it is a real bf16 computation: clearly further off than the fp32 graph's 1e-5
    assert np.median(err) > 1e-3, check(err, limit)


@pytest.mark.parametrize("island_gemm", ["float32", "float16"])     # fp16: SM75's form (no fp32 GEMM there)
@pytest.mark.parametrize("key", KEYS)
def test_float16_graph_within_bound_of_transformers(key, island_gemm):
    ids = prompt_ids(key)
    model = graph(key, "float16", island_gemm=island_gemm)
    limit = bound("float16", CONFIGS[key].num_layers)
    err = errors(run(model, ids, np.float16), key, ids)
    assert np.median(err) < limit, check(err, limit)
    emu = errors(run(emulate(model, "float16"), ids, np.float32), key, ids)     # the emulation agrees
    assert np.median(emu) < limit, check(emu, limit)


@pytest.mark.parametrize("key", ["odd", "gqa3"])
def test_rmsnorm_fp32_statistic_is_what_holds_fp16_at_large_activations(key):
    ids = prompt_ids(key)
    model = graph(key, "float16", massive=True)
    limit = bound("float16", CONFIGS[key].num_layers)
    err = errors(run(model, ids, np.float16), key, ids, massive=True)
    assert np.median(err) < limit, check(err, limit)
    statistic = nodes_named(model, "rmsnorm_stat")
    assert len(statistic) == 5 * (2 * CONFIGS[key].num_layers + 1)          # every norm's five ops
    broken = errors(run(emulate(model, "float16", extra_rounding=statistic), ids, np.float32), key, ids,
                    massive=True)
    assert not np.median(broken) < limit, check(broken, limit)


def test_graph_dtype_is_looked_up_per_sm():
    from spec.capabilities import GRAPH_DTYPE_BY_SM, graph_dtype
    from spec.registry.gpus import GPUS
    assert graph_dtype(75) == "float16" and graph_dtype(120) == "bfloat16" and graph_dtype(None) == "float32"
    assert {g.sm for g in GPUS.values()} <= set(GRAPH_DTYPE_BY_SM)     # every registry GPU has an entry
    with pytest.raises(KeyError, match="GRAPH_DTYPE_BY_SM"):
        graph_dtype(61)
