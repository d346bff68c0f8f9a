"""Streaming calibration (builder.calibrate.run_streaming, what calibrate() runs) against its oracle, the
whole-model calibration (builder.calibrate.run over a fully loaded ReferenceModel): every input amax and
K/V amax must be *equal* (bit-identical floats), on the tiny model and on random small configs (MXFP4 and
bf16 experts, dense MLP, one expert per slice), plus what the streaming pass holds: never more than one
layer's dequantized experts, and never more than `expert_bytes` of them at once."""

from __future__ import annotations

import random

import pytest
import torch

import builder.calibrate as bc
from builder.calibrate import DEFAULT_TEXTS, calibrate, run
from checkpoint.synthetic import write_synthetic
from runtime.api import Runtime
from spec.registry import get_model
from tests.support.quant_export import TINY, one_torch_thread

TEXTS = [t for t in DEFAULT_TEXTS if "\n" not in t][:12]     # one per line of a --calib-file


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


def whole_model(src, texts=TEXTS):
    rt = Runtime.from_dir(src)
    return run(rt.model, rt.tokenizer, texts, progress=False)


def assert_same(streamed, whole):
    assert streamed.amax and streamed.kv_amax
    assert streamed.amax == whole.amax                   # dict equality of Python floats: bit-identical
    assert streamed.kv_amax == whole.kv_amax
    assert (streamed.texts, streamed.tokens) == (whole.texts, whole.tokens)


def test_tiny_streamed_equals_whole_model():
    whole = whole_model(TINY)
    for expert_bytes in (bc.EXPERT_BYTES, 1):            # all experts at once; one expert per slice
        assert_same(calibrate(TINY, _file(TEXTS), progress=False, expert_bytes=expert_bytes), whole)


def test_negative_control_a_changed_weight_changes_the_maxima(tmp_path):
    """The comparison can fail: the same check against a checkpoint with one layer's weights perturbed."""
    import shutil

    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(TINY, bad)
    t = load_file(bad / "model.safetensors")
    name = next(n for n in t if n.endswith("layers.1.self_attn.o_proj.weight"))
    t[name] = t[name] * 1.5
    save_file(t, bad / "model.safetensors", metadata={"format": "pt"})
    s, w = calibrate(bad, _file(TEXTS), progress=False), whole_model(TINY)
    assert s.amax != w.amax


def _random_configs(n=4, seed=19):
    rng = random.Random(seed)
    base = get_model("tiny")
    out = []
    for k in range(n):
        heads_kv = rng.choice([1, 2])
        moe = k != n - 1                                  # the last one dense
        over = dict(name=f"rand{k}", num_layers=rng.randint(2, 5), hidden_size=rng.choice([64, 96, 128]),
                    head_dim=rng.choice([16, 32]), num_kv_heads=heads_kv, num_q_heads=heads_kv * rng.choice([1, 2]),
                    intermediate_size=rng.choice([64, 96, 160]), sliding_window=rng.choice([4, 8, 128]))
        if moe:
            e = rng.choice([4, 6, 8])
            over.update(num_experts=e, experts_per_token=rng.randint(1, min(4, e)))
        else:
            over.update(mlp="dense", num_experts=0, experts_per_token=0)
        out.append((base.with_overrides(**over), moe and k % 2 == 0))
    return out


@pytest.mark.parametrize("config,mxfp4", _random_configs(), ids=lambda v: getattr(v, "name", str(v)))
def test_random_configs_streamed_equals_whole_model(tmp_path, config, mxfp4):
    src = write_synthetic(tmp_path / "c", config, mxfp4=mxfp4, seed=len(config.name))
    whole = whole_model(src)
    per_expert = 1 if config.is_moe else bc.EXPERT_BYTES
    assert_same(calibrate(src, _file(TEXTS), progress=False, expert_bytes=per_expert), whole)


def test_holds_one_layer_and_one_expert_slice(monkeypatch):
    """What streaming holds: each layer is built once and freed before the next, and every expert
    dequantization covers at most the experts `expert_bytes` allows (checked by wrapping the builders)."""
    import gc
    import weakref

    from runtime.model import ReferenceModel
    net_layers = get_model("tiny").num_layers
    alive, built, slices = [], [], []
    load, experts = ReferenceModel.load_layer, ReferenceModel.expert_weights

    def counting_load(self, i, tensors=None, experts=True):
        gc.collect()
        assert sum(r() is not None for r in alive) == 0, "an earlier layer's weights are still referenced"
        out = load(self, i, tensors, experts)
        alive.append(weakref.ref(out[1].qkv.weight))
        built.append((i, experts))
        return out

    def counting_experts(self, m, tensors, num):
        slices.append(num)
        out = experts(self, m, tensors, num)
        alive.append(weakref.ref(out[0]))
        return out
    monkeypatch.setattr(ReferenceModel, "load_layer", counting_load)
    monkeypatch.setattr(ReferenceModel, "expert_weights", counting_experts)
    per_expert = (2 * 128 * 128 + 128 * 128) * 4
    calibrate(TINY, _file(TEXTS[:3]), progress=False, expert_bytes=3 * per_expert)
    assert built == [(i, False) for i in range(net_layers)]
    assert slices == [3, 3, 2] * net_layers              # 8 experts, 3 per slice


_FILES = {}


def _file(texts):
    import tempfile
    from pathlib import Path
    key = tuple(texts)
    if key not in _FILES:
        f = Path(tempfile.mkdtemp()) / "calib.txt"
        f.write_text("\n".join(texts) + "\n", encoding="utf-8")
        _FILES[key] = f
    return _FILES[key]
