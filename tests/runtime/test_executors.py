"""Executors behind one interface: run-engine --executor, the auto choice, and ONNX Runtime's refusal of graphs
in TensorRT's lowering (the CPU form is plugins/onnx/fp4.py's, tested in tests/plugins/test_onnx_quant.py)."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from tests.support.runtime import hf_model, prompt


def _run_cli(args, capsys):
    from runtime.cli import main
    code = main(args)
    return code, capsys.readouterr()


def test_run_engine_executors_agree(tmp_path, capsys):
    folder = hf_model("odd")[1]
    ids = ",".join(map(str, prompt("odd", 12)))
    outs = {}
    for ex in ("reference", "onnxruntime"):
        code, cap = _run_cli([str(folder), "--input-ids", ids, "--max-tokens", "12", "--stop-ids", "999",
                              "--json", "--executor", ex, "--logits-out", str(tmp_path / f"{ex}.npy")], capsys)
        assert code == 0, cap.err
        outs[ex] = json.loads(cap.out)
    assert outs["reference"]["output_ids"] == outs["onnxruntime"]["output_ids"]
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from runtime import Runtime
    with load_canonical(folder) as ck:
        graph = export_onnx(Runtime.from_dir(folder).network, ck, tmp_path / "given.onnx").path
    code, cap = _run_cli([str(folder), "--input-ids", ids, "--max-tokens", "12", "--stop-ids", "999", "--json",
                          "--onnx", str(graph)], capsys)
    assert code == 0, cap.err
    assert json.loads(cap.out)["output_ids"] == outs["reference"]["output_ids"]
    code, cap = _run_cli([str(folder), "--input-ids", ids, "--onnx", str(tmp_path / "missing.onnx")], capsys)
    assert code == 2 and "missing.onnx" in cap.err
    a, b = np.load(tmp_path / "onnxruntime.npy"), np.load(tmp_path / "reference.npy")
    assert np.abs(a - b).max() / np.abs(b).max() < 1e-5


def test_onnxruntime_executor_refuses_bf16_with_a_clear_error(capsys):
    code, cap = _run_cli([str(hf_model("odd")[1]), "--input-ids", "1,2", "--executor", "onnxruntime",
                          "--dtype", "bfloat16"], capsys)
    assert code == 2 and "float32" in cap.err and "--executor reference" in cap.err


def test_auto_picks_onnxruntime_for_float32_and_reference_for_bf16():
    import torch

    from runtime.executors import load_runtime
    from runtime.executors.onnxruntime import OnnxRuntimeExecutor
    from runtime.model import ReferenceModel
    folder = hf_model("odd")[1]
    assert isinstance(load_runtime(folder, "auto").model, OnnxRuntimeExecutor)
    assert isinstance(load_runtime(folder, "auto", dtype=torch.bfloat16).model, ReferenceModel)


def _fp4_linear_graph(with_trt_node: bool = False):
    """y = x @ W.T with W NVFP4 as ModelOpt exports it: FLOAT4E2M1 codes, FP8 block scales (per 16) and an
    fp32 global scale, two DequantizeLinear levels."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    out_f, in_f = 6, 32
    w = rng.choice(np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -.5, -1, -3, -6], np.float32), (out_f, in_f))
    scales = (rng.uniform(0.1, 3.0, (out_f, in_f // 16))).astype(ml_dtypes.float8_e4m3fn)
    inits = [numpy_helper.from_array(w.astype(ml_dtypes.float4_e2m1fn), "w"),
             numpy_helper.from_array(scales, "w_scale"), numpy_helper.from_array(np.float32(0.37), "w_global")]
    nodes = [helper.make_node("DequantizeLinear", ["w_scale", "w_global"], ["s"]),
             helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], axis=-1, block_size=16),
             helper.make_node("Gemm", ["x", "wd"], ["y"], transB=1)]
    if with_trt_node:
        nodes.insert(0, helper.make_node("TRT_SomethingElse", ["x"], ["unused"], domain="trt"))
    g = helper.make_graph(nodes, "fp4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, in_f])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, out_f])], inits)
    opsets = [helper.make_opsetid("", 23)] + ([helper.make_opsetid("trt", 1)] if with_trt_node else [])
    return helper.make_model(g, opset_imports=opsets)


def test_onnxruntime_executor_refuses_a_graph_in_tensorrts_lowering_naming_what(tmp_path):
    """A graph in TensorRT's lowering (FP4 initializers, trt:: ops) is refused before ONNX Runtime sees it,
    naming what its CPU provider lacks and the lowering to export instead."""
    import onnx
    import onnxruntime as ort

    from runtime.api import RuntimeLoadError
    from runtime.executors.onnxruntime import OnnxRuntimeExecutor
    model = _fp4_linear_graph(with_trt_node=True)
    with pytest.raises(Exception):           # the CPU provider has no FP4 tensors (why the refusal exists)
        ort.InferenceSession(_fp4_linear_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    onnx.save(model, tmp_path / "trt.onnx")
    with pytest.raises(RuntimeLoadError, match=r"initializer w \(FLOAT4E2M1\).*trt::TRT_SomethingElse.*"
                                               r"lowering='onnxruntime-cpu'"):
        OnnxRuntimeExecutor(None, tmp_path / "trt.onnx")


def test_packed_fp4_weights_written_by_the_graph_builder_read_back_exactly(tmp_path):
    """Graph.packed_weight (what quantized linear emitters use): FP4 codes packed two per byte, inline and
    as external data, read back by onnx as the same e2m1 values."""
    import onnx
    from onnx import numpy_helper

    from plugins.onnx.graph import Graph
    from numerics.mxfp4 import FP4_VALUES
    codes = np.random.default_rng(3).integers(0, 16, (4, 32)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    for external in (False, True):
        g = Graph("fp4")
        w = g.packed_weight("w", "float4e2m1", (4, 32), lambda: [packed[:2], packed[2:]])
        x = g.input("x", "float32", [1])
        g.output(x, "y", "float32", [1])
        saved = g.save(tmp_path / f"m{external}.onnx", external=external)
        assert bool(saved.data_files) == external
        t = [t for t in onnx.load(str(saved.path)).graph.initializer if t.name == w][0]
        np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.float32), FP4_VALUES[codes])


def test_fixed_cache_row_operations_on_numpy_and_torch():
    """The executors' shared cache (runtime.executors.pieces.FixedCache) moves rows the same on numpy arrays
    (ONNX Runtime) and torch tensors (TensorRT on the device; checked on CPU tensors): a moved row takes its
    filled full-layer slots and its ring, a reset row's ring is emptied, nothing else changes."""
    import numpy as np
    import torch

    from runtime.executors.pieces import CacheSpec, FixedCache
    specs = [CacheSpec("past_key_0", (2, 6, 5), True, False), CacheSpec("past_key_1", (2, 4, 5), False, False),
             CacheSpec("past_window3_pos", (4,), False, True)]
    rng = np.random.default_rng(0)
    start = {s.name: rng.standard_normal((3, *s.shape)).astype(np.float32) if not s.is_pos else
             np.tile(np.arange(4), (3, 1)).astype(np.int64) for s in specs}
    caches = []
    for make in (lambda a: a.copy(), lambda a: torch.from_numpy(a.copy())):
        cache = FixedCache(3, specs, {n: make(a) for n, a in start.items()}, np.array([4, 6, 2]))
        cache.copy_rows_from(cache, [2], [0])
        cache.reset_rows([1])
        caches.append({n: np.asarray(t) for n, t in cache.tensors.items()})
        assert cache.lengths.tolist() == [2, 0, 2]
    for name in start:
        assert np.array_equal(caches[0][name], caches[1][name]), name
    got = caches[0]
    assert np.array_equal(got["past_key_0"][0, :, :2], start["past_key_0"][2, :, :2])        # filled slots moved
    assert np.array_equal(got["past_key_0"][0, :, 2:], start["past_key_0"][0, :, 2:])        # the rest untouched
    assert np.array_equal(got["past_key_1"][0], start["past_key_1"][2])                      # the whole ring
    assert got["past_window3_pos"].tolist() == [[0, 1, 2, 3], [-1] * 4, [0, 1, 2, 3]]


def test_auto_falls_back_with_one_line_when_onnxruntime_cannot_run_a_request(tmp_path):
    """ONNX Runtime's arena capped (GPTOSS_ORT_MEMORY_LIMIT, a real allocator refusal, in a fresh process: one
    arena per process) below a 1,500-token prompt's attention scores: --executor onnxruntime fails with one
    line and exit 2; --executor auto says why in one line and gives the reference runtime's tokens; no
    traceback either way. Without the cap auto runs the same prompt on ONNX Runtime silently."""
    import os
    import subprocess
    import sys
    folder = hf_model("tiny")[1]
    ids = ",".join(map(str, prompt("tiny", 1500, seed=1)))

    def run(executor, cap=None):
        env = {k: v for k, v in os.environ.items() if k != "GPTOSS_ORT_MEMORY_LIMIT"}
        if cap:
            env["GPTOSS_ORT_MEMORY_LIMIT"] = str(cap)
        return subprocess.run([sys.executable, "-m", "runtime.cli", str(folder), "--input-ids", ids, "--max-tokens",
                               "4", "--stop-ids", "99999", "--json", "--executor", executor],
                              capture_output=True, text=True, env=env, timeout=600)
    want = run("reference")
    assert want.returncode == 0, want.stderr
    def lines(r):       # after the line saying which executor was chosen (runtime.executors.choice)
        out = r.stderr.strip().splitlines()
        assert out and out[0].startswith("executor onnxruntime:"), r.stderr
        return out[1:]
    ort = run("onnxruntime", cap=32_000_000)
    assert ort.returncode == 2 and "Traceback" not in ort.stderr
    [line] = lines(ort)
    assert "could not run this request" in line and "Available memory" in line, line
    auto = run("auto", cap=32_000_000)
    assert auto.returncode == 0 and "Traceback" not in auto.stderr, auto.stderr
    [line] = lines(auto)
    assert line.startswith("executor auto: onnxruntime could not run this request") and "reference" in line
    assert json.loads(auto.stdout)["output_ids"] == json.loads(want.stdout)["output_ids"]
    free = run("auto")
    assert free.returncode == 0 and lines(free) == [], free.stderr
    assert json.loads(free.stdout)["output_ids"] == json.loads(want.stdout)["output_ids"]


def test_cpu_lowering_keeps_fp4_experts_packed_only_when_fp32_would_not_fit():
    """The ONNX Runtime executor's choice of CPU lowering (runtime.executors.onnxruntime.cpu_lowering): the
    fp32-folded form while it fits in half the memory; a full 20b with MXFP4 experts on 24 GB gets the packed
    form, whose session bytes (experts at 0.5 + 1/16 byte a weight) are what fits; bf16 experts never pack."""
    from plugins.onnx.graph import ORT_CPU, ORT_CPU_PACKED
    from runtime.executors.onnxruntime import cpu_lowering
    from spec.network import network_from_config
    from spec.params import total_params
    from spec.registry import get_model
    c = get_model("20b")
    fp32 = 4 * total_params(c)
    mx = network_from_config(c, "mxfp4")
    assert cpu_lowering(mx, fp32, 256 << 30) == (ORT_CPU, fp32)
    lowering, held = cpu_lowering(mx, fp32, 24 << 30)
    experts = 3 * c.num_layers * c.num_experts * c.intermediate_size * c.hidden_size
    assert lowering == ORT_CPU_PACKED and held == fp32 - 4 * experts + experts // 2 + experts // 16
    assert held < (24 << 30) < fp32 / 3                   # 84 GB folded; ~19 GB packed
    assert cpu_lowering(network_from_config(c, "bf16"), fp32, 24 << 30) == (ORT_CPU, fp32)
