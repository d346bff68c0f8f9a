"""The endpoint's Harmony side, on token sequences rendered by openai-harmony itself (o200k_harmony, offline):
chat messages -> the prompt openai-harmony renders, and generated ids -> reasoning_content / content / tool_calls,
fed one token at a time as they stream in; malformed output fails at once with a clear error."""

from __future__ import annotations

import json
import time

import pytest

from deploy.openai.chat_render import harmony_messages, render_prompt
from deploy.openai.errors import OpenAIError
from deploy.openai.generation import tool_calls_json
from deploy.openai.output import HEADER_LIMIT, Delta, HarmonyOutput, HarmonyOutputError, StopStrings, TextOutput
from deploy.openai.schemas import ChatRequest
from model_repo.harmony import harmony_encoding
from model_repo.tokenizer import O200kHarmonyTokenizer, load_tokenizer
from tests.support.serving import ASSETS


@pytest.fixture(scope="module")
def enc():
    return harmony_encoding()


def _assistant(enc, *messages) -> list[int]:
    """What a model generates after the prompt's `<|start|>assistant`: the rendered assistant messages, minus that
    opening, the last one ended by its stop token (<|return|> for final, <|call|> for a tool call) as the model
    would end it."""
    ids = []
    for m in messages:
        ids += enc.render(m)
    assert enc.decode_utf8(ids[:2]) == "<|start|>assistant"
    ids = ids[2:]
    end = enc.encode("<|end|>", allowed_special="all")[0]
    stop = "<|call|>" if (messages[-1].recipient or "").startswith("functions.") else "<|return|>"
    if ids[-1] == end:
        ids[-1] = enc.encode(stop, allowed_special="all")[0]
    return ids


def _parse(ids) -> tuple[Delta, HarmonyOutput, list]:
    out, parser, pieces = Delta(), HarmonyOutput(), []
    for t in ids:
        d = parser.feed(t)
        pieces.append(d)
        out.extend(d)
    out.extend(parser.finish(truncated=False))
    return out, parser, pieces


def test_reasoning_then_final(enc):
    from openai_harmony import Message, Role
    ids = _assistant(enc, Message.from_role_and_content(Role.ASSISTANT, "The user greets; answer briefly.")
                     .with_channel("analysis"),
                     Message.from_role_and_content(Role.ASSISTANT, "Hello! How can I help?").with_channel("final"))
    out, parser, pieces = _parse(ids)
    assert out.reasoning == "The user greets; answer briefly."
    assert out.content == "Hello! How can I help?"
    assert not out.tool_calls and not parser.called_tools
    # streamed: reasoning deltas all come before the first content delta, and no delta mixes them
    kinds = [("r" if d.reasoning else "") + ("c" if d.content else "") for d in pieces if d]
    assert set(kinds) == {"r", "c"} and kinds.index("c") > max(i for i, k in enumerate(kinds) if k == "r")


def test_tool_call_with_json_arguments(enc):
    from openai_harmony import Message, Role
    args = {"city": "Paris", "unit": "celsius", "days": [1, 2]}
    ids = _assistant(enc, Message.from_role_and_content(Role.ASSISTANT, "Need the weather tool.").with_channel("analysis"),
                     Message.from_role_and_content(Role.ASSISTANT, json.dumps(args)).with_channel("commentary")
                     .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"))
    assert enc.decode_utf8(ids).endswith("<|call|>")
    out, parser, pieces = _parse(ids)
    assert parser.called_tools
    assert out.reasoning == "Need the weather tool." and out.content == ""
    calls = tool_calls_json(out.tool_calls)
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert json.loads(calls[0]["function"]["arguments"]) == args
    # the first tool-call delta names the call, the rest only add arguments
    firsts = [t for d in pieces for t in d.tool_calls if t.id]
    assert len(firsts) == 1 and firsts[0].name == "get_weather" and firsts[0].arguments == ""


def test_tool_result_turn_renders_and_the_answer_parses(enc):
    """A tool loop: the assistant's call and the tool's result come back as chat messages; they must render as
    openai-harmony renders the same conversation, and the model's next turn parses to a final answer."""
    from openai_harmony import Message, Role
    tools = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}).tools
    chat = [{"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "reasoning_content": "Call the tool.",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]
    tok = O200kHarmonyTokenizer()
    ids = render_prompt(tok, chat, tools, "low")
    text = enc.decode_utf8(ids)
    assert "Reasoning: low" in text and "# Instructions\n\nBe terse." in text
    assert "namespace functions" in text and "type get_weather = (_: {" in text
    assert '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>' \
           '{"city": "Paris"}' in text
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp_c": 21}<|end|>' in text
    assert text.endswith("<|start|>assistant")
    # the oracle: openai-harmony parses our prompt back into the conversation we meant
    parsed = enc.parse_messages_from_completion_tokens(ids[:-2], role=None)
    tool_msg = [m for m in parsed if m.author.role == Role.TOOL][0]
    assert tool_msg.author.name == "functions.get_weather" and tool_msg.content[0].text == '{"temp_c": 21}'
    call = [m for m in parsed if m.recipient == "functions.get_weather"][0]
    assert call.channel == "commentary" and json.loads(call.content[0].text) == {"city": "Paris"}
    # and the answer after the tool result
    answer = _assistant(enc, Message.from_role_and_content(Role.ASSISTANT, "21 °C in Paris.").with_channel("final"))
    out, parser, _ = _parse(answer)
    assert out.content == "21 °C in Paris." and not parser.called_tools


def test_unknown_tool_call_id_is_a_400():
    with pytest.raises(OpenAIError) as e:
        harmony_messages([{"role": "tool", "tool_call_id": "nope", "content": "x"}], None, None)
    assert e.value.status == 400 and "tool_call_id" in e.value.message


@pytest.mark.parametrize("case", ["stray_start_in_header", "text_without_header", "stop_after_end"])
def test_malformed_output_is_a_clean_error_not_a_hang(enc, case):
    from openai_harmony import Message, Role
    sp = lambda s: enc.encode(s, allowed_special="all")  # noqa: E731
    if case == "stray_start_in_header":
        ids = sp("<|channel|><|message|>hi<|end|>")
    elif case == "text_without_header":
        ids = enc.encode(" word" * (HEADER_LIMIT + 10), allowed_special=set())
    else:
        ids = _assistant(enc, Message.from_role_and_content(Role.ASSISTANT, "Hi").with_channel("final"))[:-1] + \
            sp("<|end|><|return|>")
    t0 = time.perf_counter()
    with pytest.raises(HarmonyOutputError, match="not valid Harmony"):
        _parse(ids)
    assert time.perf_counter() - t0 < 1.0
    if case == "text_without_header":
        # found while streaming, within the header limit, not at the end of a long generation
        parser = HarmonyOutput()
        with pytest.raises(HarmonyOutputError):
            for i, t in enumerate(ids):
                parser.feed(t)
        assert i == HEADER_LIMIT


def test_a_turn_cut_by_max_tokens_is_not_an_error(enc):
    from openai_harmony import Message, Role
    ids = _assistant(enc, Message.from_role_and_content(Role.ASSISTANT, "A long thought").with_channel("analysis"))
    parser = HarmonyOutput()
    out = Delta()
    for t in ids[:4]:
        out.extend(parser.feed(t))
    parser.finish(truncated=True)
    assert "A long thought".startswith(out.reasoning)


def test_text_output_for_a_tokenizer_that_is_not_harmonys():
    tok = load_tokenizer(ASSETS, "tokenizer.json")
    ids = tok.encode("ROMEO: héllo<|return|>")
    out = TextOutput(tok)
    text = "".join(out.feed(t).content for t in ids) + out.finish(False).content
    assert text == "ROMEO: héllo"       # special tokens are never text; multi-byte characters survive splits


@pytest.mark.parametrize("pieces,stops,expect,hit", [
    (["Hel", "lo wor", "ld"], ["o w"], "Hell", True),
    (["ab", "c"], ["x"], "abc", False),
    (["a", "b", "c", "d"], ["bcd", "cx"], "a", True),
    (["ab", "cx"], ["bcd"], "abcx", False),
])
def test_stop_strings_cut_the_same_however_the_text_is_split(pieces, stops, expect, hit):
    s = StopStrings(stops)
    got = "".join(s.feed(p) for p in pieces) + s.flush()
    assert got == expect and s.hit == hit
    whole = StopStrings(stops)
    assert whole.feed("".join(pieces)) + whole.flush() == expect
