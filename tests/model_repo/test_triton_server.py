"""The whole serving path for real: tritonserver 2.51 (nvidia-pytriton) on CPU, the generated model repository on the
tiny engine, tritonclient gRPC. One server for the module; it is stopped at the end and must leave no shm files."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from deploy.client import InvalidRequestError, LLMClient, RequestTimeoutError, classify, generate_many, infer_inputs
from tests.support import REPO
from tests.support.serving import ASSETS, stream_tensorrt_llm

MAX_SEQ_LEN = 512
CONTEXT_LOGITS_TOKENS = 160
VOCAB = json.loads((ASSETS / "config.json").read_text())["vocab_size"]
# context_logits answers capped at CONTEXT_LOGITS_TOKENS prompt tokens (float32)
# The served glue checked against the reference runtime (the `rt` oracle), so served on that executor; ONNX
# Runtime serving: tests/deploy/test_backend_crash.py and benchmarks/bench_serving.py.
TRITON = dict(max_seq_len=MAX_SEQ_LEN, max_batch_size=16, exit_timeout_s=15, executor="reference",
              max_context_logits_bytes=CONTEXT_LOGITS_TOKENS * VOCAB * 4)


@pytest.fixture(scope="module")
def client(server):
    return LLMClient(server.grpc_url, timeout_s=120)


CHAT = "Tell me a short story about a lighthouse keeper."


def test_chat_streams_tokens_and_equals_the_unstreamed_answer(client):
    arrivals = []
    streamed = client.generate(CHAT, 16, stream=True, reasoning_effort="low",
                               on_chunk=lambda c: arrivals.append((time.perf_counter(), c)))
    whole = client.generate(CHAT, 16, stream=False, reasoning_effort="low")
    assert streamed.text and streamed.text == whole.text
    assert streamed.analysis == whole.analysis
    assert streamed.num_output_tokens == whole.num_output_tokens == 16
    assert streamed.finish_reason == whole.finish_reason == "length"
    assert streamed.num_input_tokens == whole.num_input_tokens > 50      # the rendered Harmony conversation
    # responses as tokens come (one per token while the server keeps up), the text arriving piece by piece
    assert streamed.chunks > 2 and whole.chunks == 1
    pieces = [c.text for _, c in arrivals if c.text]
    assert len(pieces) > 1
    assert arrivals[0][0] < arrivals[-1][0]


def test_the_ensemble_name_gives_the_same_answer(server, client):
    via_bls = client.generate(CHAT, 8, stream=True, reasoning_effort="low")
    via_ensemble = LLMClient(server.grpc_url, model="ensemble").generate(CHAT, 8, stream=True,
                                                                         reasoning_effort="low")
    assert via_ensemble.text == via_bls.text and via_ensemble.num_output_tokens == 8


def test_reasoning_effort_changes_the_prompt(client):
    # The prompt's logits differ wherever its tokens do ("low" and "high" may tokenize to as many tokens).
    low = client.generate(CHAT, 1, reasoning_effort="low", return_context_logits=True)
    high = client.generate(CHAT, 1, reasoning_effort="high", return_context_logits=True)
    assert low.num_input_tokens == low.context_logits.shape[0] > 50      # the rendered Harmony conversation
    assert low.context_logits.shape != high.context_logits.shape or \
        not np.array_equal(low.context_logits, high.context_logits)


def test_16_concurrent_streams_each_equal_the_request_alone(server):
    prompts = [f"Question {i}: what is {i} plus {2 * i}? " + "Explain. " * (i % 5) for i in range(16)]
    t0 = time.perf_counter()
    together = generate_many(server.grpc_url, prompts, max_tokens=12, stream=True, reasoning_effort="low")
    t_together = time.perf_counter() - t0
    c = LLMClient(server.grpc_url)
    t0 = time.perf_counter()
    alone = [c.generate(p, 12, stream=True, reasoning_effort="low") for p in prompts]
    t_alone = time.perf_counter() - t0
    for i, (a, b) in enumerate(zip(together, alone)):
        assert a.text == b.text, f"request {i}: concurrent answer differs from the same request alone"
        assert a.num_output_tokens == b.num_output_tokens == 12
    # In-flight batching: the 16 together take clearly less than one after another.
    assert t_together < t_alone, (t_together, t_alone)


def test_64_concurrent_streams_through_the_ensemble_each_equal_the_runtime_alone(server):
    """More streams than batch rows (16): the rest queue, every one completes, each with exactly the tokens the
    runtime makes for that prompt alone at temperature 0. end_id -1: no end token, so all of max_tokens come."""
    from model_repo.harmony import render_chat
    from model_repo.tokenizer import load_tokenizer
    from runtime import Runtime, SamplingParams
    tok = load_tokenizer(server.engine)
    ids = [render_chat(tok, f"Stream {i}: name {i % 9 + 1} animals" + " quickly" * (i % 6), "low")
           for i in range(64)]
    texts = [tok.decode(x) for x in ids]
    assert [tok.encode(t) for t in texts] == ids
    served = generate_many(server.grpc_url, texts, model="ensemble", max_tokens=8, stream=True, raw=True,
                           end_id=-1, timeout_s=300)
    rt = Runtime.from_dir(server.engine)
    for i, (r, p) in enumerate(zip(served, ids)):
        alone = rt.generate([p], SamplingParams(max_tokens=8, stop_token_ids=()))[0]
        assert r.output_ids == alone.output_ids, f"stream {i} differs from the same request alone"
        assert r.num_output_tokens == 8 and r.finish_reason == "length"


@pytest.mark.parametrize("model", ["tensorrt_llm_bls", "ensemble"])
@pytest.mark.parametrize("stream", [False, True])
def test_log_probs_and_context_logits_are_the_runtimes(server, model, stream):
    # Upstream's return_log_probs -> output_log_probs and return_context_logits -> context_logits, on the raw-prompt
    # path: what an engine-regression suite reads from a served engine.
    from runtime import Runtime, SamplingParams
    rt = Runtime.from_dir(server.engine)
    text = "Once upon a time"
    ids = rt.encode(text)
    [ref] = rt.generate([ids], SamplingParams(max_tokens=6, logprobs=True))
    r = LLMClient(server.grpc_url, model=model).generate(text, 6, raw=True, stream=stream, return_log_probs=True,
                                                         return_context_logits=True)
    assert r.output_ids == ref.output_ids
    np.testing.assert_allclose(r.output_log_probs, ref.logprobs, atol=1e-4)
    assert r.context_logits.shape == (len(ids), server.vocab)
    np.testing.assert_allclose(r.context_logits, rt.prompt_logits(ids).numpy(), atol=1e-4)
    plain = LLMClient(server.grpc_url, model=model).generate(text, 6, raw=True, stream=stream)
    assert plain.output_ids == ref.output_ids and plain.output_log_probs is None and plain.context_logits is None


def test_context_logits_of_a_too_long_prompt_are_refused(server, client):
    from model_repo.tokenizer import HFTokenizer
    tok = HFTokenizer(server.engine / "tokenizer.json")
    long_text = "many words"
    while len(tok.encode(long_text)) <= CONTEXT_LOGITS_TOKENS:
        long_text += " many words"
    assert len(tok.encode(long_text)) < MAX_SEQ_LEN - 2
    with pytest.raises(InvalidRequestError, match="return_context_logits"):
        client.generate(long_text, 2, raw=True, return_context_logits=True)
    assert client.generate(long_text, 2, raw=True).num_output_tokens == 2


def test_seeded_sampling_is_reproducible(client):
    kw = dict(temperature=0.8, top_p=0.95, top_k=50, seed=42, raw=True)
    a = client.generate("Once upon a time", 10, **kw)
    b = client.generate("Once upon a time", 10, stream=True, **kw)
    assert a.text == b.text


def test_stop_words_end_the_answer(server, client):
    # Stop words match token sequences (as in TensorRT-LLM): pick a generated token whose text encodes back to it.
    from model_repo.tokenizer import HFTokenizer
    from runtime import Runtime, SamplingParams
    tok = HFTokenizer(server.engine / "tokenizer.json")
    out = Runtime.from_dir(server.engine).generate([tok.encode("stop word test")], SamplingParams(max_tokens=12))
    ids = out[0].output_ids
    k = next(i for i in range(1, len(ids)) if tok.encode(tok.decode([ids[i]])) == [ids[i]])
    stopped = client.generate("stop word test", 12, raw=True, stop_words=[tok.decode([ids[k]])])
    assert stopped.finish_reason == "stop"
    assert stopped.num_output_tokens == ids.index(ids[k]) + 1


DISCONNECTING_CLIENT = r"""
import sys
from deploy.client import LLMClient
for chunk in LLMClient(sys.argv[1], model=sys.argv[2]).stream("keep talking", int(sys.argv[3]), raw=True):
    print("chunk", flush=True)
"""


def test_a_client_disconnecting_from_the_ensemble_does_not_wedge_the_server(server, client):
    # Triton 2.51's ensemble scheduler does not forward the cancellation, so this generation runs to its end in the
    # background; the server must go on serving meanwhile.
    child = subprocess.Popen([sys.executable, "-c", DISCONNECTING_CLIENT, server.grpc_url, "ensemble", "60"],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for _ in range(3):
            assert child.stdout.readline().startswith("chunk")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert client.generate("still there?", 4, raw=True).num_output_tokens == 4


def test_a_client_disconnecting_mid_stream_does_not_wedge_the_server(server, client):
    child = subprocess.Popen([sys.executable, "-c", DISCONNECTING_CLIENT, server.grpc_url, "tensorrt_llm_bls", "400"],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for _ in range(3):
            assert child.stdout.readline().startswith("chunk")
    finally:
        child.send_signal(signal.SIGKILL)      # gone without a goodbye
        child.wait(10)
    res = client.generate("are you still there?", 4, raw=True)
    assert res.num_output_tokens == 4
    # The server noticed and freed the sequence's slot long before its 400 tokens.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "cancelled after" in server.log_path.read_text(errors="replace"):
            break
        time.sleep(0.2)
    log = server.log_path.read_text(errors="replace")
    m = re.search(r"cancelled after (\d+) tokens", log)
    assert m and int(m.group(1)) < 400


def test_timeout_cancels_and_the_server_keeps_serving(client):
    with pytest.raises(RequestTimeoutError):
        client.generate("slow", 400, stream=True, raw=True, timeout_s=0.3)
    assert client.generate("fast", 3, raw=True).num_output_tokens == 3


# -- bad requests ---------------------------------------------------------------------------------------------
def _send_raw(server, arrays: dict, model: str = "tensorrt_llm_bls"):
    """Send exactly these tensors through the gRPC stream API; -> (responses, error message or None)."""
    import tritonclient.grpc as grpcclient

    inputs = infer_inputs(arrays)
    c = grpcclient.InferenceServerClient(server.grpc_url)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer(model, inputs, enable_empty_final_response=True)
    try:
        result, error = q.get(timeout=60)
        return result, (error.message() if error is not None else None)
    finally:
        c.stop_stream()
        c.close()


TEXT = np.array([[b"hello"]], dtype=np.object_)
N = np.array([[4]], dtype=np.int32)

BAD_VIA_CLIENT = [
    ("empty text", dict(prompt=""), "text_input is empty"),
    ("blank text", dict(prompt="   \n"), "text_input is empty"),
    ("non-UTF-8 bytes", dict(prompt=b"caf\xe9 \xff"), "not valid UTF-8"),
    ("max_tokens 0", dict(max_tokens=0), "max_tokens must be > 0"),
    ("max_tokens negative", dict(max_tokens=-3), "max_tokens must be > 0"),
    ("max_tokens beyond the context", dict(max_tokens=MAX_SEQ_LEN), "beyond the context"),
    ("negative temperature", dict(temperature=-0.1), "temperature must be"),
    ("top_p out of range", dict(top_p=1.5), "top_p must be"),
    ("negative top_k", dict(top_k=-2), "top_k must be"),
    ("prompt longer than max_seq_len", dict(prompt="many words " * 400, raw=True), "longer than the engine allows"),
    ("unknown reasoning effort", dict(reasoning_effort="extreme"), "reasoning_effort"),
    ("beam search", dict(extra={"beam_width": np.array([[4]], dtype=np.int32)}), "beam_width"),
]


@pytest.mark.parametrize("case,kw,fragment", BAD_VIA_CLIENT, ids=[c[0] for c in BAD_VIA_CLIENT])
def test_bad_request_is_an_invalid_argument_and_the_server_keeps_serving(client, case, kw, fragment):
    kw = dict(kw)
    prompt = kw.pop("prompt", "hello")
    max_tokens = kw.pop("max_tokens", 4)
    for stream in (True, False):
        with pytest.raises(InvalidRequestError, match=re.escape(fragment)):
            client.generate(prompt, max_tokens, stream=stream, **kw)
    assert client.generate("hello", 2, raw=True).num_output_tokens == 2


BAD_TENSORS = [
    ("missing max_tokens", {"text_input": TEXT}),
    ("missing text_input", {"max_tokens": N}),
    ("max_tokens as FP32", {"text_input": TEXT, "max_tokens": np.array([[4.0]], dtype=np.float32)}),
    ("max_tokens as UINT32", {"text_input": TEXT, "max_tokens": np.array([[4]], dtype=np.uint32)}),
    ("text_input as INT32", {"text_input": np.array([[1]], dtype=np.int32), "max_tokens": N}),
    ("temperature as FP64", {"text_input": TEXT, "max_tokens": N, "temperature": np.array([[0.5]])}),
    ("no batch dimension", {"text_input": np.array([b"hello"], dtype=np.object_), "max_tokens": np.array([4], np.int32)}),
    ("two prompts in one request", {"text_input": np.array([[b"a"], [b"b"]], dtype=np.object_),
                                    "max_tokens": np.array([[4], [4]], dtype=np.int32)}),
    ("an input the model does not have", {"text_input": TEXT, "max_tokens": N, "bogus": N}),
]


@pytest.mark.parametrize("model", ["tensorrt_llm_bls", "ensemble"])
@pytest.mark.parametrize("case,arrays", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_missing_or_mistyped_tensors_are_refused(server, client, case, arrays, model):
    result, error = _send_raw(server, arrays, model)
    assert error is not None, f"{case}: accepted"
    assert isinstance(classify(error), InvalidRequestError), f"{case}: {error}"
    assert client.generate("hello", 2, raw=True).num_output_tokens == 2


def _http(server, path, body=None):
    req = urllib.request.Request(server.http_url + path, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("model", ["tensorrt_llm_bls", "ensemble"])
def test_invalid_argument_status_code_over_http(server, model):
    # Unary HTTP carries Triton's status code: our models' INVALID_ARG errors map to 400.
    code, body = _http(server, f"/v2/models/{model}/generate", {"text_input": "", "max_tokens": 4})
    assert code == 400 and "text_input is empty" in body
    code, body = _http(server, f"/v2/models/{model}/generate", {"text_input": "hi", "max_tokens": 4,
                                                                "temperature": -1.0})
    assert code == 400 and "temperature" in body
    code, body = _http(server, f"/v2/models/{model}/generate", {"text_input": "hi", "max_tokens": 4})
    assert code == 200 and json.loads(body)["num_output_tokens"] == 4


def _metric(text: str, name: str, model: str) -> float:
    """A counter of one model, summed over its other labels (e.g. the failure reason)."""
    return sum(float(v) for v in re.findall(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} ([0-9.e+]+)$', text, re.M))


def test_metrics_show_the_inference_counters_moving(server, client):
    def read():
        with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
            return r.read().decode()
    before = read()
    client.generate("count me", 2, raw=True)
    # The BLS model preprocesses in its own process (model_repo.preprocess); the preprocessing model answers
    # callers that use it directly, with the prompt length the BLS model reports for the same text.
    pre, error = _send_raw(server, {"QUERY": TEXT, "REQUEST_OUTPUT_LEN": N, "RAW_PROMPT": np.array([[True]])},
                           "preprocessing")
    assert error is None, error
    bls, error = _send_raw(server, {"text_input": TEXT, "max_tokens": N, "raw_prompt": np.array([[True]])})
    assert error is None, error
    assert pre.as_numpy("REQUEST_INPUT_LEN").item() == bls.as_numpy("num_input_tokens").item() > 0
    _, error = _send_raw(server, {"text_input": np.array([[b""]], dtype=np.object_), "max_tokens": N}, "ensemble")
    assert "text_input is empty" in error
    checks = [("nv_inference_request_success", m) for m in ("tensorrt_llm_bls", "preprocessing", "tensorrt_llm")]
    checks += [(n, "preprocessing") for n in ("nv_inference_count", "nv_inference_exec_count",
                                              "nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us")]
    checks += [("nv_inference_request_failure", "ensemble")]
    deadline = time.monotonic() + 10
    while True:
        after = read()
        moved = {c: _metric(after, *c) > _metric(before, *c) for c in checks}
        if all(moved.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert all(moved.values()), {c: (_metric(before, *c), _metric(after, *c)) for c in checks}


# -- the inner models, called directly ------------------------------------------------------------------------
def test_tensorrt_llm_model_streams_what_the_runtime_generates(server):
    from runtime import Runtime, SamplingParams
    prompt = [17, 18, 19, 20, 21]
    expected = Runtime.from_dir(server.engine).generate([prompt], SamplingParams(max_tokens=10, stop_token_ids=()))
    q, c = stream_tensorrt_llm(server.grpc_url, prompt, 10)
    tokens, responses = [], 0
    while True:
        result, error = q.get(timeout=60)
        assert error is None, error
        out = result.as_numpy("output_ids")
        if out is not None:
            responses += 1
            tokens += out.reshape(-1).tolist()
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    c.stop_stream()
    c.close()
    # end_id -1: no end token (upstream's meaning), so all 10 tokens come, as the runtime makes them without stops.
    assert tokens == expected[0].output_ids and len(tokens) == 10
    # A streamed response holds the tokens made since the previous one: one each while the writer keeps up.
    assert 1 < responses <= len(tokens)


def test_postprocessing_model_decodes_harmony_channels(server):
    import tritonclient.grpc as grpcclient

    from model_repo.tokenizer import HFTokenizer
    tok = HFTokenizer(server.engine / "tokenizer.json")
    ids = tok.encode("<|channel|>analysis<|message|>thinking<|end|><|start|>assistant<|channel|>final"
                     "<|message|>the answer<|return|>")
    c = grpcclient.InferenceServerClient(server.grpc_url)
    r = c.infer("postprocessing", infer_inputs({"TOKENS_BATCH": np.array([[ids]], dtype=np.int32)}))
    assert r.as_numpy("OUTPUT").reshape(-1)[0].decode() == "the answer"
    assert r.as_numpy("ANALYSIS_OUTPUT").reshape(-1)[0].decode() == "thinking"
    c.close()


# -- the command-line client ------------------------------------------------------------------------------------
def test_gptoss_client_cli(server):
    env = dict(os.environ)
    base = [sys.executable, "-m", "deploy.client_cli"]
    r = subprocess.run(base + ["generate", "hello there", "--url", server.grpc_url, "--max-tokens", "6", "--raw"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    expected = LLMClient(server.grpc_url).generate("hello there", 6, raw=True).text
    assert r.stdout.rstrip("\n") == expected
    r = subprocess.run(base + ["chat", "hi", "--url", server.grpc_url, "--max-tokens", "4", "--json",
                               "--reasoning-effort", "low"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_output_tokens"] == 4
    r = subprocess.run(base + ["generate", "hi", "--url", server.grpc_url, "--max-tokens", "0"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "max_tokens must be > 0" in r.stderr
    r = subprocess.run(base + ["chat", "--url", server.grpc_url, "--max-tokens", "3", "--no-stream"],
                       input="first\nsecond\n", capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    # two turns, the second with the first in its history (an answer may itself hold newlines)
    c = LLMClient(server.grpc_url)
    a1 = c.generate("first", 3)
    a2 = c.generate("second", 3, history=[{"role": "user", "content": "first"},
                                          {"role": "assistant", "content": a1.text}])
    assert r.stdout == a1.text + "\n" + a2.text + "\n"
