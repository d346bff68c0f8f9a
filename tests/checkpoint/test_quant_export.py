"""Quantized checkpoints (convert-checkpoint --to hf-nvfp4 / hf-fp8): against NVIDIA ModelOpt 0.47's own
export of the same model, through load_canonical and back, and run by the reference runtime.

What is compared with ModelOpt (export_hf_checkpoint after mtq.quantize on CPU; tiny random GptOssForCausalLM):
- weight-only NVFP4 (W4A16_NVFP4, experts only): every tensor, byte for byte, and both quant configs;
- W4A4 NVFP4: every tensor byte for byte except the two activation input scales per layer, which come
  from different forwards (transformers in bf16 vs our runtime in fp32, the same token ids): those agree
  to 3% for gate_up (the same activations) and ModelOpt's down_proj one is the larger (HF's eager experts
  run every expert on every token, we record routed pairs only, as the fused MoE kernel sees them);
- FP8 W8A8 + FP8 KV: expert weights and scales byte for byte; linears differ by design (one shared
  q/k/v scale, ModelOpt writes three) and by ModelOpt's bf16 rounding of x / scale before the e4m3 cast
  (a 0-d fp32 scale does not promote a bf16 tensor), which the test reproduces exactly.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from builder.convert import calibrate_and_convert
from checkpoint.config_io import read_model_config
from checkpoint.convert import load_canonical
from checkpoint.errors import CheckpointError
from checkpoint.safetensors_io import SafetensorsFile
from numerics import dequantize_mxfp4, quantize_fp8, quantize_nvfp4
from numerics.fp8 import E4M3
from tests.support.checkpoints import ROOT
from tests.support.quant_export import TINY, calib_file, modelopt_export, one_torch_thread, source


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


def _tensors(folder):
    f = SafetensorsFile(folder / "model.safetensors")
    try:
        return {n: f.read(n) for n in f.infos}
    finally:
        f.close()


def _convert(key: str, to: str, name: str, **kw):
    out = ROOT / f"ours-{key}-{name}"
    if not out.exists():
        calibrate_and_convert(source(key), out, to, progress=False, **kw)
    return out


def _configs(folder):
    hq = json.loads((folder / "hf_quant_config.json").read_text())
    hq.pop("writer", None)
    return hq, json.loads((folder / "config.json").read_text())["quantization_config"]


# -- ModelOpt bit-exactness ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["a", "b"])
def test_weight_only_nvfp4_is_modelopt_byte_for_byte(key):
    ref = modelopt_export(key, "w4a16_nvfp4")
    ours = _convert(key, "hf-nvfp4", "w4a16")
    a, b = _tensors(ref), _tensors(ours)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(_raw(a[name]), _raw(b[name])), name
    assert any(t.dtype == torch.uint8 for t in a.values())          # something was quantized
    assert _configs(ref) == _configs(ours)
    arch = [dataclasses.replace(read_model_config(f)[0], name="") for f in (ref, ours)]
    assert arch[0] == arch[1]


def test_w4a4_nvfp4_matches_modelopt_but_for_calibration_data():
    ref = modelopt_export("a", "nvfp4")
    ours = _convert("a", "hf-nvfp4", "w4a4", calibration=calib_file())
    a, b = _tensors(ref), _tensors(ours)
    assert set(a) == set(b)
    scales = [n for n in a if n.endswith("_input_scale")]
    assert len(scales) == 4
    for name in set(a) - set(scales):
        assert a[name].dtype == b[name].dtype and torch.equal(_raw(a[name]), _raw(b[name])), name
    for name in scales:
        mo, us = float(a[name]), float(b[name])
        if "gate_up" in name:
            assert abs(mo - us) / mo < 0.03, (name, mo, us)
        else:
            assert us <= mo * 1.03, (name, mo, us)
    assert _configs(ref) == _configs(ours)


def test_fp8_matches_modelopt_where_layouts_agree():
    ref = modelopt_export("a", "fp8_kv")
    ours = _convert("a", "hf-fp8", "fp8-kv", calibration=calib_file(), kv_cache="fp8")
    a, b = _tensors(ref), _tensors(ours)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
    src = _tensors(source("a"))
    for layer in range(2):
        p = f"model.layers.{layer}."
        for n in ("gate_up_proj", "gate_up_proj_weight_scale", "down_proj", "down_proj_weight_scale"):
            assert torch.equal(_raw(a[p + "mlp.experts." + n]), _raw(b[p + "mlp.experts." + n])), n
        att = p + "self_attn."
        qkv_scales = [float(a[att + f"{x}_proj.weight_scale"]) for x in "qkv"]
        for x in "qkv":                                  # one shared scale: the largest of ModelOpt's three
            assert float(b[att + f"{x}_proj.weight_scale"]) == np.float32(max(qkv_scales))
        for x in "qkvo":
            w = src[att + f"{x}_proj.weight"]
            s = float(b[att + f"{x}_proj.weight_scale"])
            ours_codes = quantize_fp8(w, s).data.view(np.uint8)                  # float32 x / s, one rounding
            assert np.array_equal(_raw(b[att + f"{x}_proj.weight"]).numpy(), ours_codes.reshape(-1))
            if float(a[att + f"{x}_proj.weight_scale"]) == np.float32(s):
                # ModelOpt: bf16 x / 0-d fp32 scale stays bf16, then the e4m3 cast: two roundings.
                mo_codes = (w / torch.tensor(s)).to(torch.float8_e4m3fn)
                assert torch.equal(_raw(a[att + f"{x}_proj.weight"]), _raw(mo_codes)), x
        for n in ("k_proj.k_scale", "v_proj.v_scale", "q_proj.input_scale", "o_proj.input_scale"):
            mo, us = float(a[att + n]), float(b[att + n])
            assert 0 < us and abs(mo - us) / mo < 0.03, (n, mo, us)
    assert _configs(ref) == _configs(ours)


# -- quant configs --------------------------------------------------------------------------------------
def test_quant_configs_contents(tmp_path):
    excl = sorted(["lm_head", "model.embed_tokens"] + [f"model.layers.{i}.mlp.router" for i in range(4)])
    cases = {
        "wo": (dict(), "W4A16_NVFP4", None, excl + [f"model.layers.{i}.self_attn*" for i in range(4)]),
        "nv": (dict(calibration=calib_file(), kv_cache="fp8"), "NVFP4", "FP8",
               excl + [f"model.layers.{i}.self_attn*" for i in range(4)]),
        "f8": (dict(calibration=calib_file()), "FP8", None, excl),
    }
    for name, (kw, algo, kv, exclude) in cases.items():
        to = "hf-fp8" if algo == "FP8" else "hf-nvfp4"
        out = calibrate_and_convert(TINY, tmp_path / name, to, progress=False, **kw)
        hq, qc = _configs(out)
        q = {"quant_algo": algo, "kv_cache_quant_algo": kv, "exclude_modules": sorted(exclude)}
        if algo != "FP8":
            q["group_size"] = 16
        assert hq == {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": q}
        fp4 = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
        fp8 = {"dynamic": False, "num_bits": 8, "type": "float"}
        group = {"W4A16_NVFP4": {"weights": fp4}, "NVFP4": {"input_activations": fp4, "weights": fp4},
                 "FP8": {"input_activations": fp8, "weights": fp8}}[algo]
        want = {"config_groups": {"group_0": {**group, "targets": ["Linear"]}}, "ignore": sorted(exclude),
                "quant_algo": algo, **({"kv_cache_scheme": fp8} if kv else {}),
                "producer": {"name": "modelopt", "version": "0.47.0"}, "quant_method": "modelopt"}
        assert qc == want
        assert json.loads((out / "hf_quant_config.json").read_text())["writer"].startswith("gptoss-trt")
        # a non-ModelOpt target written from it carries no stale quant config
        back = calibrate_and_convert(out, tmp_path / (name + "-hf"), "hf", progress=False)
        assert not (back / "hf_quant_config.json").exists()
        assert "quantization_config" not in json.loads((back / "config.json").read_text())


# -- round trips through load_canonical ----------------------------------------------------------------
def test_nvfp4_canonical_values_and_bit_exact_rewrite(tmp_path):
    src = source("b")
    out = _convert("b", "hf-nvfp4", "w4a4-kv", calibration=calib_file(), kv_cache="fp8")
    with load_canonical(src) as s, load_canonical(out) as ck:
        assert (ck.format, ck.quant, ck.features) == ("hf-nvfp4", "nvfp4", ("input_scales", "kv_scales"))
        gate, up = ck.get("layers.1.moe.gate.weight"), ck.get("layers.1.moe.up.weight")
        assert gate.global_scale == up.global_scale                          # gate/up share weight_scale_2
        g_ref, u_ref = s.get("layers.1.moe.gate.weight"), s.get("layers.1.moe.up.weight")
        amax = max(float(g_ref.abs().max()), float(u_ref.abs().max()))
        want = quantize_nvfp4(g_ref, np.float32(amax) / np.float32(2688))
        assert np.array_equal(gate.packed, want.packed) and gate.global_scale == want.global_scale
        assert np.array_equal(gate.block_scale.view(np.uint8), want.block_scale.view(np.uint8))
        assert float(ck.get("layers.1.moe.gate.input_scale")) == float(ck.get("layers.1.moe.up.input_scale")) > 0
        assert float(ck.get("layers.1.attn.qkv.k_scale")) > 0 and float(ck.get("layers.1.attn.qkv.v_scale")) > 0
        assert isinstance(ck.get("layers.1.attn.qkv.weight"), torch.Tensor)     # attention stays bf16
        assert ck.dtype("layers.0.moe.down.weight") == "nvfp4"
        part = ck.get("layers.0.moe.down.weight", slice(2, 5))                  # row pieces of experts
        assert np.array_equal(part.packed, ck.get("layers.0.moe.down.weight").packed[2:5])
    # hf-nvfp4 -> hf-nvfp4 without calibration: the same weights, weight-only
    wo = calibrate_and_convert(out, tmp_path / "wo", "hf-nvfp4", progress=False)
    a, b = _tensors(out), _tensors(wo)
    assert set(b) == {n for n in a if not n.endswith(("input_scale", "k_scale", "v_scale"))}
    assert all(torch.equal(_raw(a[n]), _raw(b[n])) for n in b)
    # and the weight-only checkpoint rewritten is identical, file for file
    again = calibrate_and_convert(wo, tmp_path / "again", "hf-nvfp4", progress=False)
    for f in ("model.safetensors", "config.json", "hf_quant_config.json"):
        assert (wo / f).read_bytes() == (again / f).read_bytes(), f


def test_fp8_round_trip_keeps_weights(tmp_path):
    out = _convert("a", "hf-fp8", "fp8-kv", calibration=calib_file(), kv_cache="fp8")
    again = calibrate_and_convert(out, tmp_path / "again", "hf-fp8", calibration=calib_file(), progress=False)
    a, b = _tensors(out), _tensors(again)
    assert set(b) == {n for n in a if not n.endswith(("k_scale", "v_scale"))}
    for n in b:
        if not n.endswith("input_scale"):
            assert torch.equal(_raw(a[n]), _raw(b[n])), n
    with load_canonical(out) as ck:
        assert ck.quant == "fp8"
        qkv = ck.get("layers.0.attn.qkv.weight")
        assert qkv.shape == ck.shape("layers.0.attn.qkv.weight") and qkv.data.dtype == E4M3


def test_mxfp4_to_nvfp4_is_lossless(tmp_path):
    mx = calibrate_and_convert(source("a"), tmp_path / "mx", "hf-mxfp4", progress=False)
    nv = calibrate_and_convert(mx, tmp_path / "nv", "hf-nvfp4", progress=False)
    with load_canonical(mx) as m, load_canonical(nv) as n:
        for name in ("layers.0.moe.gate.weight", "layers.0.moe.up.weight", "layers.1.moe.down.weight"):
            w = m.get(name)
            assert np.array_equal(n.get(name).dequantize(), dequantize_mxfp4(w.blocks, w.scales)), name
        assert n.get("layers.0.moe.gate.weight").global_scale == n.get("layers.0.moe.up.weight").global_scale


@pytest.mark.parametrize("to", ["hf", "hf-mxfp4", "openai"])
def test_quantized_sources_convert_to_every_other_format(tmp_path, to):
    for name in ("w4a4-kv", "fp8-kv"):
        key = "b" if name == "w4a4-kv" else "a"
        src = _convert(key, "hf-nvfp4" if name == "w4a4-kv" else "hf-fp8", name, calibration=calib_file(),
                       kv_cache="fp8")
        out = calibrate_and_convert(src, tmp_path / f"{name}-{to}", to, progress=False)
        with load_canonical(src) as s, load_canonical(out) as o:
            w = s.get("layers.0.moe.down.weight").dequantize()
            v = o.get("layers.0.moe.down.weight")
            v = dequantize_mxfp4(v.blocks, v.scales) if to != "hf" else v.float().numpy()
            assert np.abs(v - w).max() <= 0.2 * np.abs(w).max()


# -- the runtime runs what we write --------------------------------------------------------------------
# Measured on the shipped tiny model (logit cosine vs bf16 at each of 200 positions, mean / worst):
# mxfp4 0.99979 / 0.985, w4a16-nvfp4 0.99949 / 0.980, nvfp4 W4A4 0.99950 / 0.984, + FP8 KV 0.99935 / 0.984,
# fp8 0.99974 / 0.986. Thresholds: about 8x those mean distances (1 - cosine), 2.5x the worst position's.
# Re-measure (benchmarks/quant_quality.py) when builder/assets/tiny is replaced.
RUNTIME_CASES = {
    "mxfp4": ("hf-mxfp4", {}, "mxfp4", "bf16", 0.995),
    "w4a16-nvfp4": ("hf-nvfp4", {}, "w4a16-nvfp4", "bf16", 0.995),
    "nvfp4": ("hf-nvfp4", {"calibration": "default"}, "nvfp4", "bf16", 0.995),
    "nvfp4-kv": ("hf-nvfp4", {"calibration": "default", "kv_cache": "fp8"}, "nvfp4", "bf16", 0.995),
    "fp8": ("hf-fp8", {"calibration": "default"}, "fp8", "fp8", 0.998),
}
MIN_POSITION_COSINE = 0.95


@pytest.fixture(scope="module")
def tiny_logits():
    from runtime import Runtime
    ids = list(range(3, 203))
    return ids, Runtime.from_dir(TINY).prompt_logits(ids)


@pytest.mark.parametrize("case", list(RUNTIME_CASES))
def test_runtime_runs_each_written_format(case, tiny_logits):
    from runtime import Runtime
    to, kw, expert_quant, attn_quant, min_cos = RUNTIME_CASES[case]
    out = ROOT / f"tiny-{case}"
    if not out.exists():
        calibrate_and_convert(TINY, out, to, progress=False, calib_options={"max_tokens": 64}, **kw)
    rt = Runtime.from_dir(out)
    assert rt.network.layers[0].mlp.gate.quant == expert_quant
    assert rt.network.layers[0].attention.qkv.quant == attn_quant
    assert rt.network.layers[0].mlp.router.quant == "bf16" and rt.network.lm_head.quant == "bf16"
    assert (rt.model.layers[0][1].kv_quant is not None) == ("kv_cache" in kw)
    ids, ref = tiny_logits
    logits = rt.prompt_logits(ids)
    cos = torch.nn.functional.cosine_similarity(logits, ref, dim=-1)
    assert float(cos.mean()) > min_cos and float(cos.min()) > MIN_POSITION_COSINE, (float(cos.mean()), float(cos.min()))
    assert float((logits - ref).abs().max()) > 1e-6                       # it did quantize
    from runtime import SamplingParams
    [res] = rt.generate([ids[:8]], SamplingParams(max_tokens=4, stop_token_ids=()))
    assert len(res.output_ids) == 4


# -- what transformers does with them ----------------------------------------------------------------
def test_transformers_cannot_load_modelopt_checkpoints():
    """transformers 5.24 has no "modelopt" quantizer (its nvfp4 one refuses pre-quantized checkpoints and
    needs CUDA): it warns, skips the quant config and loads the stored bytes as plain weights. NVFP4 then
    fails on the packed shapes; FP8 loads, silently, with the e4m3 codes unscaled. Use the reference
    runtime, TensorRT-LLM (NVFP4) or vLLM (both) for these checkpoints."""
    from transformers import GptOssForCausalLM
    with pytest.raises(RuntimeError, match="mismatch"):
        GptOssForCausalLM.from_pretrained(_convert("a", "hf-nvfp4", "w4a16"), dtype=torch.float32)
    fp8 = _convert("a", "hf-fp8", "fp8-kv", calibration=calib_file(), kv_cache="fp8")
    model = GptOssForCausalLM.from_pretrained(fp8, dtype=torch.float32)
    codes = _tensors(fp8)["model.layers.0.mlp.experts.down_proj"].float()
    assert torch.equal(model.model.layers[0].mlp.experts.down_proj.data, codes)     # scale ignored


# -- errors name the tensor and the fix ----------------------------------------------------------------
def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="must be calibrated.*calibration='default'"):
        calibrate_and_convert(TINY, tmp_path / "x", "hf-fp8", progress=False)
    with pytest.raises(CheckpointError, match="FP8 KV cache needs calibrated"):
        calibrate_and_convert(TINY, tmp_path / "x", "hf-nvfp4", progress=False, kv_cache="fp8")
    with pytest.raises(CheckpointError, match="nothing to calibrate"):
        calibrate_and_convert(TINY, tmp_path / "x", "hf-mxfp4", progress=False, calibration="default")
    assert not (tmp_path / "x").exists()
    # a zero global scale (ModelOpt writes one for an all-zero weight) is refused by name
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(_convert("a", "hf-nvfp4", "w4a16"), bad)
    raw = bytearray((bad / "model.safetensors").read_bytes())
    f = SafetensorsFile(bad / "model.safetensors")
    info = f.infos["model.layers.1.mlp.experts.down_proj_weight_scale_2"]
    f.close()
    raw[info.begin:info.end] = np.float32(0).tobytes()
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with load_canonical(bad) as ck, pytest.raises(CheckpointError, match="down_proj_weight_scale_2.*finite positive"):
        ck.get("layers.1.moe.down.weight")
    # the quant config says W4A4 but the input scales are missing
    hq = json.loads((bad / "hf_quant_config.json").read_text())
    hq["quantization"]["quant_algo"] = "NVFP4"
    (bad / "hf_quant_config.json").write_text(json.dumps(hq))
    with pytest.raises(CheckpointError, match="missing 4: .*gate_up_proj_input_scale.*says NVFP4"):
        load_canonical(bad)
    hq["quantization"]["quant_algo"] = "INT4_AWQ"
    (bad / "hf_quant_config.json").write_text(json.dumps(hq))
    with pytest.raises(CheckpointError, match="quant_algo 'INT4_AWQ' is not supported"):
        load_canonical(bad)


def test_cli(tmp_path, capsys):
    from builder.convert_cli import main
    assert main([str(TINY), str(tmp_path / "wo"), "--to", "hf-nvfp4", "--no-progress"]) == 0
    assert main([str(TINY), str(tmp_path / "w4a4"), "--to", "hf-nvfp4", "--calib-file", str(calib_file()),
                 "--kv-cache", "fp8", "--no-progress"]) == 0
    assert main([str(TINY), str(tmp_path / "fp8"), "--to", "hf-fp8", "--calib-max-tokens", "16", "--no-progress"]) == 0
    algo = {d: json.loads((tmp_path / d / "hf_quant_config.json").read_text())["quantization"]
            for d in ("wo", "w4a4", "fp8")}
    assert algo["wo"]["quant_algo"] == "W4A16_NVFP4" and algo["w4a4"]["quant_algo"] == "NVFP4"
    assert algo["w4a4"]["kv_cache_quant_algo"] == "FP8" and algo["fp8"]["quant_algo"] == "FP8"   # fp8: built-in texts
    assert main([str(TINY), str(tmp_path / "bad"), "--to", "hf-nvfp4", "--kv-cache", "fp8", "--no-progress"]) == 2
    assert "FP8 KV cache needs calibrated" in capsys.readouterr().err
