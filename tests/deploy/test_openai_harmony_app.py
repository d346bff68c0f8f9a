"""The endpoint's Harmony path end to end through the FastAPI app and the official `openai` client (AsyncOpenAI over
httpx's ASGI transport), for a model with the o200k_harmony tokenizer. The tiny engine cannot write Harmony, so a
scripted token source stands in for Triton here: it replays assistant turns that openai-harmony itself rendered.
What is checked is ours: the SSE / JSON shapes of reasoning_content, content and tool_calls, finish reasons, usage
and the errors, as the official client parses them."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from deploy.openai.app import ServedModel, create_app
from deploy.openai.triton_stream import TritonStream
from model_repo.harmony import harmony_encoding
from model_repo.tokenizer import O200kHarmonyTokenizer


class ScriptedTriton(TritonStream):
    """Replays fixed generated ids, one per response when streaming (as the tensorrt_llm model does)."""

    def __init__(self, script):
        super().__init__("scripted:0")
        self.script = script
        self.requests = []

    async def is_ready(self) -> bool:
        return True

    async def generate(self, prompt_ids, max_tokens, *, stream, **kw):
        self.requests.append({"prompt_ids": list(prompt_ids), "max_tokens": max_tokens, "stream": stream, **kw})
        ids = self.script[:max_tokens]
        why = "length" if len(self.script) > max_tokens else "stop"
        if not stream:
            yield ids, why
            return
        for i, t in enumerate(ids):
            await asyncio.sleep(0)
            yield [t], (why if i == len(ids) - 1 else None)


def _turn(*messages):
    enc = harmony_encoding()
    ids = []
    for m in messages:
        ids += enc.render(m)
    ids = ids[2:]                                   # the prompt ends with <|start|>assistant
    stop = "<|call|>" if (messages[-1].recipient or "").startswith("functions.") else "<|return|>"
    ids[-1] = enc.encode(stop, allowed_special="all")[0]
    return ids


def _msg(text, channel, recipient=None):
    from openai_harmony import Message, Role
    m = Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)
    return m.with_recipient(recipient).with_content_type("<|constrain|>json") if recipient else m


@pytest.fixture(scope="module")
def tok():
    return O200kHarmonyTokenizer()


def _client(tok, script):
    triton = ScriptedTriton(script)
    app = create_app(ServedModel("gpt-oss-20b", tok, 4096), triton)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0), triton


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
MSGS = [{"role": "user", "content": "Weather in Paris?"}]


def test_reasoning_and_final_whole_and_streamed(tok):
    script = _turn(_msg("Greet back.", "analysis"), _msg("Hello there!", "final"))

    async def go():
        client, triton = _client(tok, script)
        r = await client.chat.completions.create(model="gpt-oss-20b", messages=MSGS, reasoning_effort="high")
        s = await client.chat.completions.create(model="gpt-oss-20b", messages=MSGS, reasoning_effort="high",
                                                 stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in s]
        return r, chunks, triton

    r, chunks, triton = asyncio.run(go())
    m = r.choices[0].message
    assert m.content == "Hello there!" and m.model_extra["reasoning_content"] == "Greet back."
    assert r.choices[0].finish_reason == "stop" and not m.tool_calls
    assert r.usage.completion_tokens == len(script)
    assert r.usage.prompt_tokens == len(triton.requests[0]["prompt_ids"])
    assert "Reasoning: high" in harmony_encoding().decode_utf8(triton.requests[0]["prompt_ids"])
    # Harmony's stop tokens go to Triton as stop words
    assert set(triton.requests[0]["stop_token_ids"]) == set(tok.stop_ids())
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.content or "") for d in deltas) == "Hello there!"
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "Greet back."
    assert chunks[-1].usage.completion_tokens == len(script)


def test_tool_call_whole_and_streamed(tok):
    args = {"city": "Paris"}
    script = _turn(_msg("Use the tool.", "analysis"), _msg(json.dumps(args), "commentary", "functions.get_weather"))

    async def go():
        client, _ = _client(tok, script)
        r = await client.chat.completions.create(model="gpt-oss-20b", messages=MSGS, tools=TOOLS)
        s = await client.chat.completions.create(model="gpt-oss-20b", messages=MSGS, tools=TOOLS, stream=True)
        return r, [c async for c in s]

    r, chunks = asyncio.run(go())
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == args
    parts = [t for ch in chunks if ch.choices for t in (ch.choices[0].delta.tool_calls or [])]
    assert parts[0].id and parts[0].function.name == "get_weather" and all(p.index == 0 for p in parts)
    assert json.loads("".join(p.function.arguments or "" for p in parts)) == args
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]


def test_malformed_output_is_a_500_or_an_error_event(tok):
    enc = harmony_encoding()
    script = enc.encode("<|channel|><|message|>oops<|end|>", allowed_special="all")

    async def go():
        client, _ = _client(tok, script)
        with pytest.raises(openai.InternalServerError) as whole:
            await client.chat.completions.create(model="gpt-oss-20b", messages=MSGS)
        with pytest.raises(openai.APIError) as streamed:
            s = await client.chat.completions.create(model="gpt-oss-20b", messages=MSGS, stream=True)
            async for _ in s:
                pass
        return whole.value, streamed.value

    whole, streamed = asyncio.run(asyncio.wait_for(go(), 30))
    assert whole.body["code"] == "invalid_model_output" and "not valid Harmony" in whole.body["message"]
    assert "not valid Harmony" in str(streamed)


def test_a_turn_cut_by_max_tokens_ends_with_length(tok):
    script = _turn(_msg("A long chain of thought.", "analysis"), _msg("Done.", "final"))

    async def go():
        client, _ = _client(tok, script)
        return await client.chat.completions.create(model="gpt-oss-20b", messages=MSGS, max_completion_tokens=6)

    r = asyncio.run(go())
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    assert "A long chain of thought.".startswith(r.choices[0].message.model_extra["reasoning_content"])
