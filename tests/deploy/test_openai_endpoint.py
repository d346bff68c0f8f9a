"""The official `openai` client, unchanged, against `serve-engine ENGINE --openai-port P` on the tiny engine (a real
tritonserver behind it). Oracle for texts and token counts: the same request through Triton's own front model
(tensorrt_llm_bls over gRPC with deploy.client), which tokenizes, renders and detokenizes on its own path."""

from __future__ import annotations

import concurrent.futures as cf
import json
import urllib.error
import urllib.request

import openai
import pytest

from deploy.client import LLMClient
from tests.support.openai_server import metric


SERVED = dict(max_batch_size=16)          # tests/deploy/conftest.py serves it


def _chat(client, text, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": text}], **kw)


def _streamed(stream):
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    return text, finish, usage, chunks


def test_503_while_loading_then_models_list(served, client):
    assert served.while_loading is not None, "the first request after the endpoint came up was answered 200"
    code, body = served.while_loading
    assert code == 503 and body["error"]["code"] == "model_loading" and body["error"]["type"] == "service_unavailable"
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_stream_equals_non_stream_and_matches_triton(served, client):
    whole = _chat(client, "Speak, good sir.", max_tokens=24, temperature=0)
    text, finish, usage, chunks = _streamed(_chat(client, "Speak, good sir.", max_tokens=24, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}))
    assert whole.choices[0].message.role == "assistant"
    assert text == whole.choices[0].message.content and text
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    # usage: in the last chunk only (empty choices), and equal to the non-streamed one
    assert len(usage) == 1 and chunks[-1].usage == usage[0] and chunks[-1].choices == []
    assert usage[0].model_dump() == whole.usage.model_dump()
    # the oracle: Triton's front model renders the same Harmony chat and generates the same tokens
    ref = LLMClient(served.grpc_url).generate("Speak, good sir.", 24, reasoning_effort="medium", temperature=0.0)
    assert whole.usage.prompt_tokens == ref.num_input_tokens
    assert whole.usage.completion_tokens == ref.num_output_tokens == len(ref.output_ids)
    assert whole.choices[0].message.content == ref.text
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_completions_stream_equals_non_stream_and_usage_counts_the_tokens(served, client):
    whole = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0)
    text, finish, usage, _ = _streamed_completion(client.completions.create(
        model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert text == whole.choices[0].text and text
    assert finish == [whole.choices[0].finish_reason]
    assert usage[0].model_dump() == whole.usage.model_dump()
    ref = LLMClient(served.grpc_url).generate("ROMEO:", 20, raw=True, temperature=0.0)
    assert whole.usage.prompt_tokens == ref.num_input_tokens
    assert whole.usage.completion_tokens == len(ref.output_ids)
    assert ref.text.startswith(whole.choices[0].text)     # raw: the server's text keeps special tokens
    # token-id prompts give the same answer
    ids = client.completions.create(model="tiny", prompt=[int(t) for t in _tokenize("ROMEO:")], max_tokens=20,
                                    temperature=0)
    assert ids.choices[0].text == whole.choices[0].text


def _tokenize(text):
    from model_repo.tokenizer import load_tokenizer
    from tests.support.serving import ASSETS
    return load_tokenizer(ASSETS, "tokenizer.json").encode(text)


def _streamed_completion(stream):
    chunks = list(stream)
    return ("".join(c.choices[0].text for c in chunks if c.choices),
            [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
            [c.usage for c in chunks if c.usage is not None], chunks)


def test_stop_strings_cut_the_text_and_end_early(client):
    full = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, temperature=0).choices[0].text
    stop = full[8:11]
    assert stop.strip() and 0 < full.find(stop) <= 8
    cut = full[:full.find(stop)]
    for stream in (False, True):
        r = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, temperature=0, stop=[stop],
                                      stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}))
        text, finish, usage = (_streamed_completion(r)[:3] if stream else
                               (r.choices[0].text, [r.choices[0].finish_reason], [r.usage]))
        assert text == cut and finish == ["stop"]
        assert usage[0].completion_tokens < 30


@pytest.mark.parametrize("kw,param", [({"max_tokens": -1}, "max_tokens"), ({"max_completion_tokens": 0},
                                                                            "max_completion_tokens"),
                                      ({"max_tokens": 100000}, "max_tokens"), ({"n": 2}, "n"),
                                      ({"temperature": 3.5}, "temperature"), ({"top_p": 0}, "top_p"),
                                      ({"reasoning_effort": "extreme"}, "reasoning_effort")])
def test_bad_parameters_are_400_in_openais_shape(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, "hi", **kw)
    assert e.value.status_code == 400
    body = e.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == param and body["message"]


def test_completions_max_tokens_minus_one_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hi", max_tokens=-1)
    assert "max_tokens" in e.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-oss-120b", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4)
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"


def test_raw_http_errors_keep_the_shape(served):
    for body, status in ((b"{not json", 400), (b"[]", 400), (json.dumps({"model": "tiny"}).encode(), 400)):
        req = urllib.request.Request(f"{served.base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("accepted")
        except urllib.error.HTTPError as e:
            assert e.code == status
            err = json.loads(e.read())["error"]
            assert set(err) == {"message", "type", "param", "code"}


def test_eight_concurrent_requests_each_equal_to_alone(client):
    prompts = [f"Line {i}: what say you?" for i in range(8)]
    alone = [_chat(client, p, max_tokens=16, temperature=0).choices[0].message.content for p in prompts]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: _chat(client, p, max_tokens=16, temperature=0), prompts))
    assert [r.choices[0].message.content for r in together] == alone
    assert all(r.usage.completion_tokens == 16 or r.choices[0].finish_reason == "stop" for r in together)


def test_tools_and_a_tool_loop_are_accepted(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    plain = _chat(client, "Weather in Paris?", max_tokens=8, temperature=0)
    r = _chat(client, "Weather in Paris?", max_tokens=8, temperature=0, tools=tools, reasoning_effort="low")
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # the tools are in the prompt (the developer message), so it is longer
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    none = _chat(client, "Weather in Paris?", max_tokens=8, temperature=0, tools=tools, tool_choice="none")
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    loop = client.chat.completions.create(model="tiny", max_tokens=8, temperature=0, tools=tools, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_9", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "{\"temp_c\": 21}"}])
    assert loop.usage.prompt_tokens > r.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", max_tokens=4, messages=[
            {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_unknown", "content": "1"}])


def test_metrics_count_requests_tokens_and_ttft(served, client):
    before = served.metrics_text()
    r = _chat(client, "Count me.", max_tokens=6, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    after = served.metrics_text()
    ep = "/v1/chat/completions"
    assert metric(after, "gptoss_openai_requests_total", endpoint=ep, status="200") == \
        metric(before, "gptoss_openai_requests_total", endpoint=ep, status="200") + 1
    assert metric(after, "gptoss_openai_requests_total", endpoint=ep, status="404") == \
        metric(before, "gptoss_openai_requests_total", endpoint=ep, status="404") + 1
    assert metric(after, "gptoss_openai_generation_tokens_total", endpoint=ep) - \
        metric(before, "gptoss_openai_generation_tokens_total", endpoint=ep) == r.usage.completion_tokens
    assert metric(after, "gptoss_openai_prompt_tokens_total", endpoint=ep) - \
        metric(before, "gptoss_openai_prompt_tokens_total", endpoint=ep) == r.usage.prompt_tokens
    assert metric(after, "gptoss_openai_time_to_first_token_seconds_count", endpoint=ep) == \
        metric(before, "gptoss_openai_time_to_first_token_seconds_count", endpoint=ep) + 1
    assert metric(after, "gptoss_openai_requests_running") == 0


@pytest.mark.parametrize("extra,param", [({"max_tokens": "10"}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
                                         ({"stream": "true"}, "stream"), ({"temperature": "0.5"}, "temperature"),
                                         ({"seed": 10 ** 30}, "seed")])
def test_no_type_coercion_a_string_or_bool_for_a_number_is_400(client, extra, param):
    """Strict request models (#22): "10" and true are not 10 and 1, as OpenAI's API refuses them; the control
    is the same request with the proper type (the test above this one's siblings)."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                       extra_body=extra, **({} if "max_tokens" in extra else {"max_tokens": 2}))
    assert e.value.status_code == 400 and e.value.body["type"] == "invalid_request_error"
    assert param in (e.value.body["param"] or "") + e.value.body["message"]
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_client_mistakes_in_the_body_are_400_or_413_in_openais_shape(served, client):
    """A body over the limit (413, naming the limit and its setting), deep nesting, a lone surrogate and an
    integer of 5,000 digits (400): OpenAI's error body each time, and the endpoint answers normally after."""
    from deploy.openai.app import DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES_ENV
    chat = '{"model": "tiny", "messages": [{"role": "user", "content": "%s"}]%s}'
    # over the limit: refused on its Content-Length, before a byte of the body is read
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(served.base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", f"{u.path}/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(DEFAULT_MAX_BODY_BYTES + 1))
    conn.endheaders()
    r = conn.getresponse()
    err = json.loads(r.read())["error"]
    assert r.status == 413 and MAX_BODY_BYTES_ENV in err["message"] and str(DEFAULT_MAX_BODY_BYTES) in err["message"]
    conn.close()
    cases = [
        ('{"model": "tiny", "x": ' + "[" * 100000 + "]" * 100000 + "}", 400, "nests too deeply"),
        (chat % ("\\ud800", ""), 400, "not valid JSON"),
        (chat % ("hi", ', "max_tokens": ' + "9" * 5000), 400, "not valid JSON"),
    ]
    for body, status, says in cases:
        req = urllib.request.Request(f"{served.base_url}/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError(f"accepted: {body[:60]}")
        except urllib.error.HTTPError as e:
            assert e.code == status, (body[:60], e.code)
            err = json.loads(e.read())["error"]
            assert set(err) == {"message", "type", "param", "code"} and says in err["message"], err
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")
