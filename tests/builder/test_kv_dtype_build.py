"""`build-engine --kv-dtype` reaches the built engine: the plan, the engine's target in the manifest, the
cache key, llm_api_options.yaml and the checkpoint's FP8 KV scales all say the same dtype.
Negative control: the same build without the flag gets Blackwell's default, fp8, everywhere."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from checkpoint.convert import load_canonical
from tests.support import BIN


def _build(out, cache, *extra):
    r = subprocess.run([str(BIN / "build-engine"), "--model", "tiny", "--gpu", "b200", "--cross-build",
                        "--output", str(out), "--cache-dir", str(cache), "--no-progress", *extra],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    return out


def _facts(engine):
    m = json.loads((engine / "engine.json").read_text())
    options = yaml.safe_load((engine / "llm_api_options.yaml").read_text())
    quant = json.loads((engine / "hf_quant_config.json").read_text())["quantization"]
    with load_canonical(engine) as ck:
        kv_scales = sorted(n for n in ck.names() if n.endswith((".k_scale", ".v_scale")))
    return m, options, quant, kv_scales


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv")
    return (_build(root / "bf16", root / "cache", "--kv-dtype", "bf16"), _build(root / "default", root / "cache"))


def test_kv_dtype_bf16_reaches_target_manifest_options_and_checkpoint(engines):
    m, options, quant, kv_scales = _facts(engines[0])
    assert m["plan"]["kv_dtype"] == "bf16"
    assert m["target"]["kv_cache_dtype"] == "bf16"
    assert options["kv_cache_config"]["dtype"] == "auto"      # TensorRT-LLM: the model's dtype (bf16)
    assert quant["kv_cache_quant_algo"] is None and kv_scales == []


def test_default_on_blackwell_is_fp8_with_calibrated_kv_scales(engines):
    m, options, quant, kv_scales = _facts(engines[1])
    assert m["plan"]["kv_dtype"] == m["target"]["kv_cache_dtype"] == "fp8"
    assert options["kv_cache_config"]["dtype"] == "fp8"
    assert quant["kv_cache_quant_algo"] == "FP8" and len(kv_scales) == 2 * 4      # k and v of tiny's 4 layers
    assert m["cache_key"] != json.loads((engines[0] / "engine.json").read_text())["cache_key"]


def test_plan_only_says_the_same(tmp_path):
    r = subprocess.run([str(BIN / "build-engine"), "--model", "tiny", "--gpu", "b200", "--kv-dtype", "bf16",
                        "--plan", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kv_dtype"] == "bf16"
