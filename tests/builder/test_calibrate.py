"""builder.calibrate: what it records (checked against transformers' forward of the same model and a
brute-force MoE), how texts are read, and that the converter stores exactly the scales it derives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from builder.calibrate import DEFAULT_TEXTS, CalibrationError, calibrate, load_texts
from builder.convert import calibrate_and_convert
from checkpoint.convert import load_canonical
from checkpoint.quant_policy import kv_scale, policy
from spec.canonical import input_scale_name
from tests.support.quant_export import TINY, calib_file, calib_ids, one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def cal():
    return calibrate(TINY, calib_file(), progress=False)


@pytest.fixture(scope="module")
def hf_activations():
    """Per layer, from transformers' fp32 forward over the same token ids: amax of q_proj's and o_proj's
    inputs, of the MLP input, of v_proj's output, and the MLP inputs themselves."""
    from transformers import GptOssForCausalLM
    model = GptOssForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()
    n = model.config.num_hidden_layers
    amax = {k: [0.0] * n for k in ("q_in", "o_in", "mlp_in", "v_out", "k_out")}
    mlp_inputs = [[] for _ in range(n)]
    hooks = []

    def keep(kind, i, value):            # returns None: a pre-hook's return value would replace the args
        amax[kind][i] = max(amax[kind][i], float(value.detach().abs().max()))
        if kind == "mlp_in":
            mlp_inputs[i].append(value.detach().reshape(-1, value.shape[-1]))

    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        hooks += [a.q_proj.register_forward_pre_hook(lambda m, args, i=i: keep("q_in", i, args[0])),
                  a.o_proj.register_forward_pre_hook(lambda m, args, i=i: keep("o_in", i, args[0])),
                  a.v_proj.register_forward_hook(lambda m, args, out, i=i: keep("v_out", i, out)),
                  a.k_proj.register_forward_hook(lambda m, args, out, i=i: keep("k_out", i, out)),
                  layer.mlp.register_forward_pre_hook(lambda m, args, i=i: keep("mlp_in", i, args[0]))]
    with torch.no_grad():
        for ids in calib_ids(TINY):
            model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return amax, [torch.cat(x) for x in mlp_inputs], model.config


def test_default_texts_and_files(tmp_path):
    assert load_texts("default") == list(DEFAULT_TEXTS) and len(DEFAULT_TEXTS) >= 24
    f = tmp_path / "c.txt"
    f.write_text("first text\n\n   \nsecond text  \n")
    assert load_texts(f) == ["first text", "second text"]
    with pytest.raises(CalibrationError, match="does not exist; fix: pass --calib-file"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(CalibrationError, match="no non-empty lines"):
        load_texts(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CalibrationError, match="not UTF-8"):
        load_texts(tmp_path / "latin1.txt")


def test_records_every_quantizable_input_and_kv(cal):
    with load_canonical(TINY) as ck:
        layers = ck.config.num_layers
    want = {input_scale_name(f"layers.{i}.{m}.weight") for i in range(layers)
            for m in ("attn.qkv", "attn.out", "moe.gate", "moe.up", "moe.down")}
    assert set(cal.amax) == want
    assert set(cal.kv_amax) == {f"layers.{i}.attn.qkv.{x}_scale" for i in range(layers) for x in "kv"}
    assert all(v > 0 and np.isfinite(v) for v in [*cal.amax.values(), *cal.kv_amax.values()])
    for i in range(layers):                       # gate and up read one input: one scale
        assert cal.amax[f"layers.{i}.moe.gate.input_scale"] == cal.amax[f"layers.{i}.moe.up.input_scale"]
    assert cal.texts == len(calib_ids(TINY)) and cal.tokens == sum(map(len, calib_ids(TINY)))


def test_amax_equals_transformers_activations(cal, hf_activations):
    amax, _, config = hf_activations
    for i in range(config.num_hidden_layers):
        for ours, theirs in ((f"layers.{i}.attn.qkv.input_scale", "q_in"), (f"layers.{i}.attn.out.input_scale", "o_in"),
                             (f"layers.{i}.moe.gate.input_scale", "mlp_in")):
            assert cal.amax[ours] == pytest.approx(amax[theirs][i], rel=1e-4), ours
        assert cal.kv_amax[f"layers.{i}.attn.qkv.v_scale"] == pytest.approx(amax["v_out"][i], rel=1e-4)
        # K is recorded after RoPE (what the cache stores): a rotation of each (i, i + d/2) pair times
        # YaRN's concentration, so it lies between the pre-RoPE amax and sqrt(2) times it, scaled.
        conc = 0.1 * np.log(config.rope_parameters["factor"]) + 1.0
        k = cal.kv_amax[f"layers.{i}.attn.qkv.k_scale"]
        assert 0 < k <= conc * np.sqrt(2) * amax["k_out"][i] * 1.0001


def test_down_input_is_over_routed_pairs_only(cal, hf_activations):
    """The down projection's input amax is the max over (token, routed expert) SwiGLU outputs, computed
    here by brute force from the MLP inputs transformers saw."""
    from plugins.reference.moe import clamped_swiglu, route
    _, mlp_inputs, config = hf_activations
    with load_canonical(TINY) as ck:
        for i, x in enumerate(mlp_inputs):
            g = ck.get(f"layers.{i}.moe.gate.weight").float()
            u = ck.get(f"layers.{i}.moe.up.weight").float()
            bg = ck.get(f"layers.{i}.moe.gate.bias").float()
            bu = ck.get(f"layers.{i}.moe.up.bias").float()
            _, idx = route(x, ck.get(f"layers.{i}.moe.router.weight").float(),
                           ck.get(f"layers.{i}.moe.router.bias").float(), config.num_experts_per_tok)
            acts = clamped_swiglu(torch.einsum("th,eih->tei", x, g) + bg, torch.einsum("th,eih->tei", x, u) + bu,
                                  config.swiglu_alpha if hasattr(config, "swiglu_alpha") else 1.702,
                                  config.swiglu_limit)                           # [T, E, I], every expert
            routed = acts.gather(1, idx[..., None].expand(-1, -1, acts.shape[-1]))
            assert cal.amax[f"layers.{i}.moe.down.input_scale"] == pytest.approx(float(routed.abs().max()), rel=1e-4)
            assert float(routed.abs().max()) <= float(acts.abs().max())


def test_max_tokens_truncates_and_progress_goes_to_stderr(capsys):
    c = calibrate(TINY, calib_file(), max_tokens=3, progress=True)
    assert c.tokens == sum(min(3, len(ids)) for ids in calib_ids(TINY))
    assert "calibrating" in capsys.readouterr().err


def test_converter_stores_the_derived_scales(cal, tmp_path):
    out = calibrate_and_convert(TINY, tmp_path / "nv", "hf-nvfp4", progress=False, calibration=calib_file(),
                             kv_cache="fp8")
    pol = policy("nvfp4")
    with load_canonical(out) as ck:
        for name in pol.input_scale_names(ck.config):
            assert np.float32(ck.get(name)) == pol.input_scale(cal.amax[name]), name
        for name, amax in cal.kv_amax.items():
            assert np.float32(ck.get(name)) == kv_scale(amax) == np.float32(amax) / np.float32(448), name
        assert not any(n.startswith("layers.0.attn.qkv.input") for n in ck.names())    # nvfp4: experts only
    assert json.loads((out / "hf_quant_config.json").read_text())["quantization"]["kv_cache_quant_algo"] == "FP8"


def test_calibration_errors(tmp_path):
    import shutil
    src = tmp_path / "no-tok"
    shutil.copytree(TINY, src)
    (src / "tokenizer.json").unlink()
    with pytest.raises(CalibrationError, match="needs the model's tokenizer.json"):
        calibrate(src, calib_file(), progress=False)
    with pytest.raises(CalibrationError, match="needs the model's tokenizer.json"):
        calibrate_and_convert(src, tmp_path / "out", "hf-nvfp4", progress=False, calibration="default")
    assert not (tmp_path / "out").exists()
    # a tokenizer from another model (ids beyond this vocab) is named as such
    from tests.support.checkpoints import hf_checkpoint
    small = tmp_path / "small"
    shutil.copytree(hf_checkpoint("a"), small)             # vocab 256
    shutil.copy(TINY / "tokenizer.json", small / "tokenizer.json")
    with pytest.raises(CalibrationError, match="beyond the model's vocab_size 256"):
        calibrate(small, "default", progress=False)
