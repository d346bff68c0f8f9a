"""One bad request harms no other: a sampling failure mid-decode is that request's error only (in-flight batcher),
and under a real tritonserver 64 concurrent streams with poisoned requests mixed in each get their own answer."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.serving import stream_tensorrt_llm

pytestmark = pytest.mark.reliability


def _alone(rt, prompt, n, **kw):
    from runtime import SamplingParams
    return rt.generate([prompt], SamplingParams(max_tokens=n, stop_token_ids=(), **kw))[0].output_ids


def test_min_temperature_agrees_between_request_validation_and_runtime():
    from model_repo.requests import MIN_TEMPERATURE as request_min
    from runtime.sampling import MIN_TEMPERATURE as runtime_min
    assert request_min == runtime_min


@pytest.mark.parametrize("t", [3e-38, 1e-30, float("nan"), float("inf"), -1.0])
def test_overflowing_temperatures_are_invalid_up_front(t):
    import numpy as np

    from model_repo.requests import RequestError, sampling
    from runtime.sampling import SamplingParams
    with pytest.raises(RequestError, match="temperature must be 0"):
        sampling(np.array([[t]], dtype=np.float32))
    with pytest.raises(ValueError, match="temperature must be 0"):
        SamplingParams(temperature=t)
    assert sampling(np.array([[0.0]], dtype=np.float32)).temperature == 0.0


def test_a_sampling_failure_mid_decode_fails_only_its_request(rt, monkeypatch):
    """The poisoned request's sampler raises at its 4th token; the others finish, equal to running alone."""
    import runtime.scheduler as sched_module
    from runtime.sampling import SamplingParams
    from runtime.scheduler import Request, Scheduler
    real_sample = sched_module.sample
    drawn = {"poison": 0}

    def sample(logits, params, gens):
        if any(p.seed == 666 for p in params):
            drawn["poison"] += 1
            if drawn["poison"] >= 4:
                raise FloatingPointError("probability tensor contains inf or nan")
        return real_sample(logits, params, gens)

    monkeypatch.setattr(sched_module, "sample", sample)
    b = Scheduler(rt.model, max_batch_size=8).start()
    prompts = [[(5 * i + j) % 900 + 3 for j in range(4 + i)] for i in range(6)]
    kws = [dict(temperature=0.8, seed=100 + i) if i % 2 else {} for i in range(6)]
    kws[3] = dict(temperature=0.8, seed=666)
    got = {i: [] for i in range(6)}
    final: dict = {}
    done = threading.Event()

    def emit_for(i):
        def emit(tokens, reason, message):
            got[i].extend(tokens)
            if reason is not None:
                final[i] = (reason, message)
                if len(final) == 6:
                    done.set()
        return emit
    try:
        for i, p in enumerate(prompts):
            b.submit(Request(f"r{i}", p, SamplingParams(max_tokens=10, stop_token_ids=(), **kws[i]), emit=emit_for(i)))
        assert done.wait(120), f"not every request got a final response: {final}"
    finally:
        b.stop()
    for i in (0, 1, 2, 4, 5):
        assert final[i] == ("length", None), final[i]
        assert got[i] == _alone(rt, prompts[i], 10, **kws[i]), f"request {i} differs from running alone"
    reason, message = final[3]
    assert reason == "error" and "sampling failed for this request" in message and "inf or nan" in message
    assert len(got[3]) == 3


# -- under a real server ---------------------------------------------------------------------------------
MAX_SEQ_LEN = 256
POISON = {  # request index -> (what is wrong, keyword arguments, fragment of its own error)
    5: ("temperature that overflows", dict(temperature=3e-38), "temperature must be 0"),
    17: ("top_p zero", dict(top_p=0.0), "top_p must be"),
    30: ("temperature that overflows, unstreamed", dict(temperature=1e-30, stream=False), "temperature must be 0"),
    44: ("max_tokens beyond the context", dict(max_tokens=MAX_SEQ_LEN), "beyond the context"),
    58: ("negative top_k", dict(top_k=-1), "top_k must be"),
}
# The served glue checked against the reference runtime (the `rt` oracle), so served on that executor; ONNX
# Runtime serving: tests/deploy/test_backend_crash.py and benchmarks/bench_serving.py.
TRITON = dict(max_seq_len=MAX_SEQ_LEN, max_batch_size=16, exit_timeout_s=15, executor="reference")


@pytest.mark.parametrize("model", ["tensorrt_llm_bls", "ensemble"])
def test_64_streams_with_poisoned_requests(server, model):
    from deploy.client import InvalidRequestError, LLMClient
    n_tokens = 6
    prompts = [f"Stream {i}: tell me about ships." + " And the sea." * (i % 3) for i in range(64)]
    results: list = [None] * 64
    errors: list = [None] * 64

    def run(i):
        what = POISON.get(i)
        kw = dict(stream=True, reasoning_effort="low", max_tokens=n_tokens)
        if i % 4 == 1:
            kw.update(temperature=0.7, seed=1000 + i)
        if what:
            kw.update(what[1])
        try:
            results[i] = LLMClient(server.grpc_url, model, timeout_s=300).generate(prompts[i], **kw)
        except Exception as e:  # noqa: BLE001
            errors[i] = e

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads), "a stream never got its final response"
    for i, (what, _, fragment) in POISON.items():
        assert isinstance(errors[i], InvalidRequestError), (what, errors[i], results[i])
        assert fragment in str(errors[i]), (what, str(errors[i]))
    good = [i for i in range(64) if i not in POISON]
    assert [errors[i] for i in good] == [None] * len(good), [e for e in errors if e][:3]
    solo = LLMClient(server.grpc_url, model, timeout_s=300)
    for i in good[::7] + [4, 6, 16, 18, 29, 31, 43, 45, 57, 59]:     # neighbours of every poisoned request
        kw = dict(temperature=0.7, seed=1000 + i) if i % 4 == 1 else {}
        alone = solo.generate(prompts[i], n_tokens, stream=True, reasoning_effort="low", **kw)
        assert results[i].text == alone.text and results[i].num_output_tokens == alone.num_output_tokens == n_tokens, i
    # and the server keeps serving
    assert solo.generate("hello", 2, raw=True).num_output_tokens == 2
    assert time.perf_counter() - t0 < 600


def _drain(q, c, pending=()):
    tokens, error = [], None
    pending = list(pending)
    while True:
        result, err = pending.pop(0) if pending else q.get(timeout=120)
        if err is not None:
            error = err
            break
        out = result.as_numpy("output_ids")
        if out is not None:
            tokens += out.reshape(-1).tolist()
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    c.stop_stream()
    c.close()
    return tokens, error


def test_a_reused_request_id_is_refused_and_stops_nothing(server):
    # The first decodes to the context's end (a few seconds on the tiny model, even on a loaded box: 60 tokens
    # were once all out before the second stream had connected, and the second then rightly ran).
    n_first = MAX_SEQ_LEN - 4
    first = stream_tensorrt_llm(server.grpc_url, [17, 18, 19, 20], n_first, "dup")
    head = first[0].get(timeout=120)                 # the first is decoding: its first token is out
    second_tokens, second_error = _drain(*stream_tensorrt_llm(server.grpc_url, [5, 6, 7], 4, "dup"))
    tokens, error = _drain(*first, pending=[head])
    assert error is None and len(tokens) == n_first, (error, len(tokens))
    assert second_tokens == [] and "request id 'dup' is already in flight" in str(second_error)
    again, error = _drain(*stream_tensorrt_llm(server.grpc_url, [5, 6, 7], 4, "dup"))   # free again once finished
    assert error is None and len(again) == 4
