"""build-engine's tensorrt/ folder on the tiny model: real TensorRT-RTX plans for an RTX 5090 (NVFP4 W4A4) and
an L40S (FP8 W8A8), built here without a GPU, their graphs in the SM's compute dtype (bf16 on both); TensorRT-RTX's
own parser accepts the graphs; the NVFP4 graph's greedy tokens on the CPU (bf16 emulated, tests/support/bf16.py)
equal the reference runtime's NVFP4 emulation; the manifest never claims a run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from spec.manifest import MANIFEST_FILE
from tests.support import BIN

GREEDY_TOKENS = 12


def build(out: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "build-engine"), *args, "--output", str(out), "--cache-dir", str(cache),
                           "--no-progress"], capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("trt"), tmp_path_factory.mktemp("cache")
    out = {}
    for gpu in ("rtx-5090", "l40s"):
        r = build(root / gpu, "--model", "tiny", "--gpu", gpu, "--keep-graph", cache=cache)   # the tests read it
        assert r.returncode == 0, r.stderr
        out[gpu] = root / gpu
    return out


def manifest(engine: Path) -> dict:
    return json.loads((engine / MANIFEST_FILE).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("gpu,sm,quant", [("rtx-5090", 120, "nvfp4"), ("l40s", 89, "fp8")])
def test_plan_built_here_and_never_claimed_to_run(engines, gpu, sm, quant):
    import tensorrt_rtx
    m = manifest(engines[gpu])
    t = m["tensorrt"]
    assert m["quant"] == quant
    assert (t["builder"], t["builder_version"], t["sm"], t["ran_on_gpu"]) == ("tensorrt-rtx", tensorrt_rtx.__version__,
                                                                             sm, False)
    plan, graph = engines[gpu] / t["plan"], engines[gpu] / t["onnx"]
    assert plan.name == f"model.sm{sm}.plan" and plan.stat().st_size == t["plan_bytes"] > 1 << 20
    assert sha256(plan) == t["plan_sha256"] and sha256(graph) == t["onnx_sha256"]
    assert "never run" in t["note"]
    # the graph TensorRT built is in the SM's compute dtype, looked up in spec.capabilities
    from spec.capabilities import graph_dtype
    assert t["graph_dtype"] == graph_dtype(sm) == "bfloat16"
    elem = {i.name: i.type.tensor_type.elem_type for i in onnx.load(graph, load_external_data=False).graph.input}
    assert elem["past_key_0"] == onnx.TensorProto.BFLOAT16
    # the parsed network's size, counted by TensorRT: every expert GEMM and attention matmul is a layer
    from spec.registry.models import get_model
    c = get_model("tiny")
    assert t["plan_layers"] > t["plan_gemm_layers"] >= c.num_layers * (2 + 3 * c.num_experts)
    assert t["plan_seconds"] > 0 and t["weights_stripped"] is False
    # nothing in validated_on says a TensorRT plan (or TensorRT-LLM) ran
    assert not any(v["ok"] for v in m["validated_on"] if v["runtime"] != "reference")


@pytest.mark.parametrize("gpu", ["rtx-5090", "l40s"])
def test_tensorrt_rtx_parser_accepts_the_engine_graph(engines, gpu):
    from builder.tensorrt.plan import parses
    assert parses(engines[gpu] / "tensorrt" / "model.onnx") == []


def test_nvfp4_graph_is_modelopts_pattern(engines):
    from spec.registry.models import get_model
    c = get_model("tiny")
    from plugins.onnx.shared_weights import load_graph       # onnx.load refuses hard-linked data files
    g = load_graph(engines["rtx-5090"] / "tensorrt" / "model.onnx").graph
    fp4 = [t for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT4E2M1]
    dynq = [n for n in g.node if n.op_type == "TRT_FP4DynamicQuantize" and n.domain == "trt"]
    # every expert's gate, up and down weights in FP4; one activation quantizer per expert GEMM input
    assert len(fp4) == c.num_layers * c.num_experts * 3
    assert len(dynq) == c.num_layers * c.num_experts * 2
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dynq[0].attribute}
    assert attrs == {"axis": -1, "block_size": 16, "scale_type": onnx.TensorProto.FLOAT8E4M3FN}
    users = {i: n for n in g.node for i in n.input}
    assert users[fp4[0].name].op_type == "DequantizeLinear"
    assert {a.name: a.i for a in users[fp4[0].name].attribute} == {"axis": -1, "block_size": 16}
    # the L40S graph: FP8 weights and Q/DQ activations, no FP4
    g8 = load_graph(engines["l40s"] / "tensorrt" / "model.onnx").graph
    assert sum(t.data_type == onnx.TensorProto.FLOAT8E4M3FN and len(t.dims) == 2 for t in g8.initializer) >= \
        c.num_layers * (2 + 3 * c.num_experts)      # qkv, out and every expert's gate/up/down
    assert any(n.op_type == "QuantizeLinear" for n in g8.node)
    assert not any(t.data_type == onnx.TensorProto.FLOAT4E2M1 for t in g8.initializer)


def onnx_greedy(model: onnx.ModelProto, prompt: list[int], n_new: int) -> list[int]:
    """Greedy decoding on the graph with onnx.reference (+ TensorRT's trt:: op on the CPU): prefill, then one
    token per call, the KV cache carried from present_* outputs to past_* inputs."""
    from plugins.onnx.trt_ops import reference_evaluator
    sess = reference_evaluator(model)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (1 if d.dim_param == "batch" else 0)
                for d in vi.type.tensor_type.shape.dim]
        if vi.name.endswith("_pos"):
            feeds[vi.name] = np.full(dims, -1, np.int64)       # empty slots
        elif vi.name.startswith("past_"):
            feeds[vi.name] = np.zeros(dims, np.float32)
    names = [o.name for o in model.graph.output]
    ids, pos, out = list(prompt), list(range(len(prompt))), []
    for _ in range(n_new):
        feeds["input_ids"], feeds["position_ids"] = np.array([ids], np.int64), np.array([pos], np.int64)
        res = dict(zip(names, sess.run(None, feeds)))
        out.append(int(np.argmax(res["logits"][0, -1])))
        feeds.update({"past_" + k.removeprefix("present_"): v for k, v in res.items() if k.startswith("present_")})
        ids, pos = [out[-1]], [pos[-1] + 1]
    return out


def test_nvfp4_graph_greedy_tokens_equal_reference_emulation(engines):
    from runtime import Runtime, SamplingParams
    engine = engines["rtx-5090"]
    rt = Runtime.from_dir(engine)
    prompt = rt.encode("The king")
    [ref] = rt.generate([prompt], SamplingParams(max_tokens=GREEDY_TOKENS, temperature=0.0, stop_token_ids=()))
    # the engine's bf16 graph as a GPU computes it: ops in fp32, every bf16 value rounded (tests/support/bf16.py)
    from tests.support.bf16 import emulate
    from plugins.onnx.shared_weights import load_graph       # onnx.load refuses hard-linked data files
    model = emulate(load_graph(engine / "tensorrt" / "model.onnx"), manifest(engine)["tensorrt"]["graph_dtype"])
    assert onnx_greedy(model, prompt, GREEDY_TOKENS) == list(ref.output_ids)
    # the same network in the CPU lowering (plugins/onnx/fp4.py), through ONNX Runtime: the CPU executor's path
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from plugins.onnx.graph import ORT_CPU
    from runtime.api import find_checkpoint
    with load_canonical(find_checkpoint(engine)) as ck:
        cpu_graph = export_onnx(rt.network, ck, engine.parent / "cpu.onnx", lowering=ORT_CPU).path

    def run_engine(graph):
        return subprocess.run([str(BIN / "run-engine"), str(engine), "--executor", "onnxruntime", "--onnx",
                               str(graph), "--input-ids", ",".join(map(str, prompt)), "--max-tokens",
                               str(GREEDY_TOKENS), "--json"], capture_output=True, text=True, timeout=300)
    r = run_engine(cpu_graph)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output_ids"] == list(ref.output_ids)
    # the TensorRT graph itself is refused on the CPU, naming what the CPU provider lacks
    r = run_engine(engine / "tensorrt" / "model.onnx")
    assert r.returncode == 2 and "FLOAT4E2M1" in r.stderr and "onnxruntime-cpu" in r.stderr, r.stderr
    # negative control: the same graph with its calibrated activation scales 1000x too small (activations
    # saturate at 6 * 448 * scale) decodes differently
    for t in model.graph.initializer:
        if t.name.endswith(".input_scale"):
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) / np.float32(1000), t.name))
    assert onnx_greedy(model, prompt, GREEDY_TOKENS) != list(ref.output_ids)


def test_missing_builder_fails_a_plan_target_unless_graph_only(engines, tmp_path, monkeypatch):
    import shutil

    from builder.tensorrt import PlanBuildError
    from builder.tensorrt.engine_dir import write_tensorrt
    from spec.network import load_network
    engine = tmp_path / "e"
    shutil.copytree(engines["rtx-5090"], engine)
    shutil.rmtree(engine / "tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)      # import tensorrt_rtx -> ImportError
    with pytest.raises(PlanBuildError, match="tensorrt_rtx is not installed"):
        write_tensorrt(engine, load_network(engine / "network.json"), 120, 4, 256)
    t = write_tensorrt(engine, load_network(engine / "network.json"), 120, 4, 256, graph_only=True)
    assert t["plan"] is None and t["graph_only"] is True and t["onnx"] == "tensorrt/model.onnx"
    assert "--graph-only" in t["note"] and (engine / t["onnx"]).is_file()
    assert not list((engine / "tensorrt").glob("*.plan"))


STAGING = re.compile(r"\.[^/\s]+\.[a-z]+-\d+-[0-9a-f]{8}")     # checkpoint.fsutil.staging_dir's names


def test_a_plan_that_cannot_be_built_fails_the_build_and_installs_nothing(tmp_path):
    """A 0-byte builder workspace: TensorRT-RTX asks for more workspace memory; build-engine exits 4 with that
    reason in one line and leaves no engine (and no staging folder) behind."""
    out = tmp_path / "engine"
    r = build(out, "--model", "tiny", "--gpu", "rtx-5090", "--plan-workspace-mib", "0", "--cache-policy", "off",
              cache=tmp_path / "cache")
    assert r.returncode == 4, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("build-engine: no TensorRT plan")]
    assert "SM 120" in line and "workspace memory" in line and "--graph-only" in line, line
    assert not STAGING.search(line), line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no staging folder left
    # the twin with --graph-only: an engine with the graph, no plan, and engine.json says so
    r = build(out, "--model", "tiny", "--gpu", "rtx-5090", "--plan-workspace-mib", "0", "--graph-only",
              "--cache-policy", "off", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    t = manifest(out)["tensorrt"]
    assert t["plan"] is None and t["graph_only"] is True and (out / t["onnx"]).is_file()
    assert not list((out / "tensorrt").glob("*.plan"))


@pytest.mark.parametrize("gpu", ["rtx-5090", "l40s"])
def test_manifest_names_no_staging_path(engines, gpu):
    text = (engines[gpu] / MANIFEST_FILE).read_text()
    assert not STAGING.search(text), STAGING.search(text)


def test_hopper_and_blackwell_datacentre_targets_store_no_graph_and_get_gpu_build_instructions(engines, tmp_path):
    """SM90/100 engines are served by TensorRT-LLM from the checkpoint: no graph is stored (the note says why),
    and `--validate` on such a GPU exports it on demand (here, the SM claimed without a GPU: the graph is
    written and recorded, the plan build then fails for want of standard TensorRT and says so)."""
    import shutil

    from builder.tensorrt.engine_dir import write_tensorrt
    from builder.tensorrt.targets import builder_for
    from spec.network import load_network
    assert [builder_for(sm) for sm in (75, 80, 86, 89, 120, 121, 90, 100, 103, None)] == \
        ["tensorrt-rtx"] * 6 + ["tensorrt"] * 3 + [None]
    engine = tmp_path / "e"
    shutil.copytree(engines["rtx-5090"], engine)
    shutil.rmtree(engine / "tensorrt")
    t = write_tensorrt(engine, load_network(engine / "network.json"), 100, 4, 256)
    assert (t["builder"], t["plan"], t["builder_version"], t["ran_on_gpu"]) == ("tensorrt", None, None, False)
    assert t["onnx"] is None and not (engine / "tensorrt").exists()
    assert "no ONNX graph stored" in t["note"] and "build-engine --validate" in t["note"]
    from builder.tensorrt.engine_dir import validate_tensorrt
    record = validate_tensorrt(engine, t, present_sms=[100])
    assert t["onnx"] == "tensorrt/model.onnx" and (engine / t["onnx"]).is_file() and t["plan"] is None
    assert record["ok"] is False and "tensorrt" in record["note"]
    from builder.tensorrt.plan import parses
    assert parses(engine / t["onnx"]) == []          # the graph exported on demand is one TensorRT(-RTX) reads


def test_model_read_from_checkpoint_when_not_given(tmp_path):
    from builder.engine.sources import shipped_checkpoint
    from spec.registry.models import get_model
    src = shipped_checkpoint(get_model("tiny"))
    r = subprocess.run([str(BIN / "build-engine"), "--checkpoint", str(src), "--gpu", "rtx-5090", "--plan", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "tiny"
    # a size no registry entry has: planned from its config alone
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = 6
    cfg["layer_types"] = ["sliding_attention", "full_attention"] * 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([str(BIN / "build-engine"), "--checkpoint", str(tmp_path), "--gpu", "b200", "--plan", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == tmp_path.name
    r = subprocess.run([str(BIN / "build-engine"), "--checkpoint", str(tmp_path / "nope"), "--gpu", "b200", "--plan"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "config.json" in r.stderr


def test_a_failed_gpu_run_is_recorded_as_not_run(engines):
    """--validate's TensorRT step on a machine that claims the SM but cannot run the plan (no CUDA here):
    a record that says why, and ran_on_gpu stays false."""
    from builder.tensorrt.engine_dir import validate_tensorrt
    section = dict(manifest(engines["rtx-5090"])["tensorrt"])
    assert validate_tensorrt(engines["rtx-5090"], section, present_sms=[89]) is None    # no GPU of its SM
    record = validate_tensorrt(engines["rtx-5090"], section, present_sms=[120])
    assert record["ok"] is False and "CUDA" in record["note"] and section["ran_on_gpu"] is False
