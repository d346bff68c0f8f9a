"""network.json is the structure every target derives from: an edit to that one file (window off, sinks dropped)
changes what the targets that execute it do, and is refused by the targets that read config.json instead."""

from __future__ import annotations

import shutil

import pytest
import torch

from checkpoint.config_io import read_model_config
from model_repo.trtllm import EngineLoadError, check_network_matches_checkpoint, llm_kwargs
from regression import faults
from runtime import Runtime
from runtime.executors import load_runtime
from spec.network import config_mismatches, load_network

PROMPT = list(range(5, 45))        # longer than the tiny model's window of 16


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from builder.engine.build import BuildRequest, build
    out = tmp_path_factory.mktemp("net") / "tiny-h100"
    return build(BuildRequest(model="tiny", gpu="h100", output=str(out), cache_policy="off", cross_build=True,
                              progress=False))


def _logits(engine_dir):
    return Runtime.from_dir(engine_dir).prompt_logits(PROMPT)


@pytest.mark.parametrize("fault", ["disable_sliding_window", "drop_sinks"])
def test_a_network_json_edit_is_seen_or_refused_by_every_target(engine, tmp_path, fault):
    broken = tmp_path / fault
    faults.break_engine(fault, engine, broken)
    # Executes network.json: the reference runtime and the ONNX graph (plugins.onnx, run by ONNX Runtime)
    # run the edited network, and agree with each other on it.
    assert not torch.allclose(_logits(engine), _logits(broken), atol=1e-3)
    onnx = load_runtime(broken, "onnxruntime").prompt_logits(PROMPT)
    assert torch.allclose(onnx, _logits(broken), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(load_runtime(engine, "onnxruntime").prompt_logits(PROMPT), onnx, atol=1e-3)
    # Reads config.json: TensorRT-LLM's loader refuses the engine before anything is imported.
    llm_kwargs(engine)                                    # the intact engine passes the check
    with pytest.raises(EngineLoadError, match="network.json and config.json disagree"):
        llm_kwargs(broken)
    config, _, _ = read_model_config(broken)
    diffs = config_mismatches(load_network(broken / "network.json"), config)
    assert diffs and all("network.json says" in d for d in diffs)


def test_a_config_json_edit_is_refused_too(engine, tmp_path):
    import json
    broken = tmp_path / "cfg"
    shutil.copytree(engine, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["swiglu_limit"] = 9.0
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineLoadError, match="swiglu_limit: network.json says 7.0, config.json says 9.0"):
        check_network_matches_checkpoint(broken)


def test_the_llm_api_options_come_from_the_network(engine):
    import yaml
    options = yaml.safe_load((engine / "llm_api_options.yaml").read_text())
    net = load_network(engine / "network.json")
    assert options["max_seq_len"] <= net.max_position_embeddings
    kwargs = llm_kwargs(engine, max_batch_size=3)
    assert kwargs["max_batch_size"] == options["max_batch_size"]    # the file wins over defaults, as upstream


def test_the_planners_kernels_are_the_networks_plugins():
    from builder.fit import kernels_needed, plan
    from spec.network import network_from_config
    from spec.registry import get_model
    from spec.registry.quant_formats import get_quant
    p = plan("20b", "b200")
    assert tuple(p.kernels) == network_from_config(get_model("20b"), p.quant).kernels
    assert tuple(p.kernels) == kernels_needed(get_model("20b"), get_quant(p.quant))


def test_planner_and_runtime_size_the_kv_cache_alike():
    from builder.fit import plan
    from runtime.kv_cache import kv_cache_bytes
    from spec.network import network_from_config
    from spec.registry import get_model
    for model in ("20b", "120b"):
        p = plan(model, "h200", max_seq_len=8192, kv_dtype="bf16", tp=1)
        assert kv_cache_bytes(network_from_config(get_model(model)), 8192) == p.kv_bytes_per_sequence
