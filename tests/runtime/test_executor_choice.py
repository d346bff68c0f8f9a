"""One executor choice for run-engine and the served model (runtime/executors/choice.py), ONNX Runtime's memory
estimate (plugins/onnx/memory.py) and the scheduler's admission within it."""

from __future__ import annotations

import json

import pytest
import torch

from plugins.onnx.memory import max_forward_tokens, moe_token_bytes, ort_budget_bytes, ort_peak_bytes, weight_bytes
from runtime.devices import PresentGpu
from runtime.executors import load_runtime
from runtime.executors.choice import ExecutorChoiceError, choose_executor
from runtime.executors.onnxruntime import engine_network
from runtime.sampling import SamplingParams
from runtime.scheduler import Request, Scheduler
from spec.manifest import EngineManifest


def test_cpu_engine_runs_on_onnxruntime_within_memory(tiny_engine):
    c = choose_executor(tiny_engine, "auto", tokens=16)
    assert c.name == "onnxruntime" and "exactly" in c.reason
    # bf16 is not something ONNX Runtime's CPU provider runs: the reference runtime, saying why.
    c = choose_executor(tiny_engine, "auto", dtype=torch.bfloat16)
    assert c.name == "reference" and "float32" in c.reason
    # A request whose estimate exceeds the budget falls back, naming the terms and what fits.
    net = engine_network(tiny_engine)
    fits = max_forward_tokens(net, ort_budget_bytes())
    c = choose_executor(tiny_engine, "auto", tokens=fits + 1)
    assert c.name == "reference" and f"it fits {fits} tokens" in c.reason and "moe_rows" in c.reason
    assert choose_executor(tiny_engine, "auto", tokens=fits).name == "onnxruntime"
    assert choose_executor(tiny_engine, "reference").reason == "asked for (--executor reference)"
    with pytest.raises(ExecutorChoiceError, match="unknown executor 'trtllm'"):
        choose_executor(tiny_engine, "trtllm")                   # run-engine has no TensorRT-LLM path


def test_memory_estimate_terms(tiny_engine):
    from checkpoint.convert import load_canonical
    from spec.params import total_params
    net = engine_network(tiny_engine)
    with load_canonical(tiny_engine) as ck:
        # The planner's independent parameter count; the estimate counts the matrices (biases, norms, sinks: <1%).
        assert 0.99 * 4 * total_params(ck.config) < weight_bytes(net) <= 4 * total_params(ck.config)
    moe = [l.mlp for l in net.layers if l.mlp.kind == "moe"][0]
    # The sparse lowering's rows per (token, slot): input, gate|up, SwiGLU, down; far below one expert's weights.
    rows = (moe.gate.in_features + 2 * moe.gate.out_features + moe.gate.out_features + moe.down.out_features) * 4
    assert moe_token_bytes(net, 1000) == 1000 * moe.top_k * rows
    expert = sum(e.in_features * e.out_features for e in (moe.gate, moe.up, moe.down)) * 4
    assert rows * 20 < expert
    a, b = ort_peak_bytes(net, 100), ort_peak_bytes(net, 200)
    assert b.terms["moe_rows"] == 2 * a.terms["moe_rows"] and b.total > a.total
    budget = a.total
    n = max_forward_tokens(net, budget)
    assert ort_peak_bytes(net, n).total <= budget < ort_peak_bytes(net, n + 1).total


def _gpu_engine(engine, plan: bool):
    m = EngineManifest.read(engine)
    m.gpu, m.sm, m.quant = ("rtx-5090", 120, "bf16")
    m.tensorrt = {"plan": "tensorrt/model.sm120.plan", "builder": "tensorrt-rtx", "sm": 120} if plan else None
    m.write(engine)
    return engine


def test_gpu_engines(tiny_engine):
    rtx = [PresentGpu("NVIDIA GeForce RTX 5090", 120, 32000)]
    e = _gpu_engine(tiny_engine, plan=True)
    for served in (False, True):
        c = choose_executor(e, "auto", present=rtx, served=served)
        assert c.name == "tensorrt" and "TensorRT-RTX plan" in c.reason
    # run-engine without the GPU goes on to the CPU rule, saying why; the served model refuses instead.
    c = choose_executor(e, "auto", present=[])
    assert c.name == "onnxruntime" and c.reason.startswith("no SM 120 GPU here")
    with pytest.raises(ExecutorChoiceError, match="--executor reference"):
        choose_executor(e, "auto", present=[], served=True)
    e = _gpu_engine(tiny_engine, plan=False)
    c = choose_executor(e, "auto", present=rtx)
    assert c.name == "onnxruntime" and "no TensorRT-LLM path" in c.reason
    with pytest.raises(ExecutorChoiceError, match="tensorrt_llm is not importable"):
        choose_executor(e, "auto", present=rtx, served=True)


def test_run_engine_logs_the_choice(tiny_engine, capsys):
    from runtime.cli import main
    assert main([str(tiny_engine), "--input-ids", "1,2,3", "--max-tokens", "2", "--json"]) == 0
    out = capsys.readouterr()
    assert "executor onnxruntime: " in out.err and len(json.loads(out.out)["output_ids"]) == 2


def _run(sched: Scheduler, prompts, max_tokens=2):
    done = {}
    for i, p in enumerate(prompts):
        sched.submit(Request(str(i), p, SamplingParams(max_tokens=max_tokens),
                             emit=lambda t, r, m, i=i: r and done.__setitem__(i, (r, m))))
    steps = 0
    while sched.step():
        steps += 1
    return done, steps


def test_scheduler_admits_within_the_forward_limit(tiny_engine):
    rt = load_runtime(tiny_engine, "onnxruntime", log=lambda line: None)
    ex = rt.model
    assert ex.max_forward_tokens == max_forward_tokens(rt.network, ort_budget_bytes())
    prompts = [[1, 2, 3, 4, 5, 6]] * 3
    # Negative control: no limit -> one prefill admits all three.
    ex.max_forward_tokens = None
    s = Scheduler(ex, max_batch_size=4)
    done, _ = _run(s, prompts)
    assert all(r == "length" for r, _ in done.values()) and s.max_active == 3
    # A limit of 12 tokens: two rows of 6 per prefill at most, and a 13-token prompt is refused by name.
    ex.max_forward_tokens = 12
    s = Scheduler(ex, max_batch_size=4)
    calls = []
    forward = ex.forward
    ex.forward = lambda ids, pos, cache, **kw: (calls.append(tuple(ids.shape)), forward(ids, pos, cache, **kw))[1]
    done, _ = _run(s, prompts + [list(range(13))])
    assert max(b * t for b, t in calls) <= 12
    assert done[3][0] == "error" and "forwards at most 12" in done[3][1] and "--executor reference" in done[3][1]
    assert all(done[i][0] == "length" for i in range(3))


def test_a_model_the_reference_cannot_hold_gets_onnxruntimes_packed_budget(monkeypatch):
    """The full 20b: its fp32 weights (84 GB) exceed the whole memory, so ONNX Runtime's packed lowering (weights as
    stored, ~14 GB) may take ORT_LARGE_MODEL_FRACTION of it instead of half; its estimate counts the packed bytes
    it is given. Control: the tiny model keeps half the memory."""
    import plugins.onnx.memory as memory
    from spec.network import network_from_config
    from spec.registry import get_model
    net = network_from_config(get_model("20b"), "mxfp4")
    ram = 24 * 10**9
    monkeypatch.setattr(memory.os, "sysconf", lambda k: 4096 if k == "SC_PAGE_SIZE" else ram // 4096)
    assert memory.weight_bytes(net) > ram
    assert memory.ort_budget_for(net) == int(ram // 4096 * 4096 * memory.ORT_LARGE_MODEL_FRACTION)
    held = 14_400_000_000
    assert memory.ort_peak_bytes(net, 8, weights=held).terms["weights"] == held
    fits = memory.max_forward_tokens(net, memory.ort_budget_for(net), weights=held)
    assert 512 <= fits and memory.max_forward_tokens(net, memory.ort_budget_for(net)) == 0   # fp32: nothing fits
    tiny = network_from_config(get_model("tiny"), "bf16")
    assert memory.ort_budget_for(tiny) == int(ram // 4096 * 4096 * memory.ORT_MEMORY_FRACTION)
