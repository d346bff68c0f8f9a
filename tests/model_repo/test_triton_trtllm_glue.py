"""The TensorRT-LLM LLM-API backend's glue, against a stand-in `tensorrt_llm` module shaped like upstream's API
(LLM(model=..., **options), generate_async(ids, sampling_params=..., streaming=True) -> async iterable of outputs
with .outputs[0].token_ids / .finish_reason / .finished, abort(); SamplingParams(**kw)).
This checks our code paths only; the real library is not installable on these CPU machines (see the report)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading

import pytest

from model_repo.backends import TRTLLM_UNVALIDATED, TrtllmBackend, make_backend
from runtime.sampling import SamplingParams
from runtime.scheduler import Request

FAKE = textwrap.dedent('''
    import asyncio
    CALLS = []

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class _Completion:
        def __init__(self, ids, reason):
            self.token_ids, self.finish_reason = ids, reason

    class _Result:
        def __init__(self, n, stop_ids):
            self.n, self.stop_ids, self.aborted = n, stop_ids, False
        def abort(self):
            self.aborted = True
        def __aiter__(self):
            return self._gen()
        async def _gen(self):
            ids = []
            for i in range(self.n):
                await asyncio.sleep(0.001)
                if self.aborted:
                    return
                ids.append(100 + i)
                done = i == self.n - 1
                out = type("Out", (), {})()
                out.outputs = [_Completion(list(ids), "length" if done else None)]
                out.finished = done
                yield out

    class LLM:
        def __init__(self, model, **kw):
            CALLS.append(("LLM", model, kw))
        def generate_async(self, inputs, sampling_params=None, streaming=False):
            CALLS.append(("generate_async", list(inputs), sampling_params.kw, streaming))
            return _Result(sampling_params.kw["max_tokens"], sampling_params.kw.get("stop_token_ids"))
        def shutdown(self):
            CALLS.append(("shutdown",))
''')


@pytest.fixture()
def fake_trtllm(tmp_path, monkeypatch):
    pkg = tmp_path / "fake" / "tensorrt_llm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    sys.modules.pop("tensorrt_llm", None)
    yield
    sys.modules.pop("tensorrt_llm", None)


def test_llm_api_backend_streams_and_says_it_is_unvalidated(tiny_engine, fake_trtllm):
    (tiny_engine / "llm_api_options.yaml").write_text("tensor_parallel_size: 1\nmax_batch_size: 8\n", encoding="utf-8")
    logs = []
    # The glue itself (make_backend first checks that this machine has the engine's GPU; tests/spec/test_target.py).
    b = TrtllmBackend(tiny_engine, max_batch_size=16, max_seq_len=512, log=logs.append)
    import tensorrt_llm
    try:
        assert any(TRTLLM_UNVALIDATED in m for m in logs)
        kind, model, options = tensorrt_llm.CALLS[0]
        assert model == str(tiny_engine) and options == {"tensor_parallel_size": 1, "max_batch_size": 8,
                                                    "max_seq_len": 512}
        got, done = [], threading.Event()
        reasons = []

        def emit(tokens, reason, msg):
            got.extend(tokens)
            if reason:
                reasons.append(reason)
                done.set()
        b.submit(Request("r1", [1, 2, 3], SamplingParams(max_tokens=5, temperature=0.5, top_k=7, seed=3,
                                                         stop_token_ids=(1022,)), emit=emit))
        assert done.wait(10)
        assert got == [100, 101, 102, 103, 104] and reasons == ["length"]
        call = [c for c in tensorrt_llm.CALLS if c[0] == "generate_async"][0]
        assert call[1] == [1, 2, 3] and call[3] is True
        assert call[2] == {"max_tokens": 5, "temperature": 0.5, "top_k": 7, "seed": 3, "stop_token_ids": [1022]}
        # cancellation aborts the upstream request
        got.clear()
        done.clear()
        reasons.clear()
        b.submit(Request("r2", [1], SamplingParams(max_tokens=10_000),
                         emit=lambda t, r, m: (got.extend(t), r and (reasons.append(r), done.set()))))
        while len(got) < 3:
            asyncio.run(asyncio.sleep(0.005))
        b.cancel("r2")
        assert done.wait(10) and reasons == ["cancelled"] and len(got) < 10_000
    finally:
        b.shutdown()
    assert ("shutdown",) in tensorrt_llm.CALLS


def test_auto_picks_a_cpu_executor_without_a_gpu(tiny_engine, fake_trtllm):
    import torch
    threads = torch.get_num_threads()
    lines = []
    b = make_backend(tiny_engine, "auto", max_batch_size=2, max_seq_len=128, log=lines.append)
    try:
        # tensorrt_llm importable here, but a CPU engine: ONNX Runtime runs the fp32 tiny engine exactly.
        assert b.name == "onnxruntime" and any("executor onnxruntime: " in line for line in lines)
    finally:
        b.shutdown()
        torch.set_num_threads(threads)    # the reference backend sets it for its process
