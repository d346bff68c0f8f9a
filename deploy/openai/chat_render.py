"""OpenAI chat messages -> a Harmony conversation (openai-harmony) -> the engine's prompt ids.

The mapping (the one vLLM's and TensorRT-LLM's gpt-oss servers use):
- the Harmony system message carries `reasoning_effort` (openai-harmony's defaults otherwise; no date, so the same
  request renders the same ids);
- `system` and `developer` messages become the developer message's instructions, and `tools` (type function) its
  function namespace (`tool_choice: "none"` leaves them out);
- `user` -> user; `assistant` -> its `reasoning_content` (or `reasoning`) on the analysis channel, its `content` on
  the final channel, and each of its `tool_calls` as a commentary message `to=functions.NAME` with JSON content;
- `tool` -> a message from `functions.NAME` to the assistant on the commentary channel (the Harmony format's
  tool result), NAME found from `tool_call_id` among the
  earlier assistant tool calls (or the message's own `name`).
"""

from __future__ import annotations

from typing import Any, Sequence

from deploy.openai.errors import bad_request
from model_repo.harmony import HarmonyRequestError, harmony_encoding, render_for_completion, system_message, to_engine_ids
from model_repo.tokenizer import ServingTokenizer


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.content[{i}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                  f"are supported", "messages")
            out.append(part["text"])
        return "".join(out)
    raise bad_request(f"{where}.content must be a string or a list of text parts", "messages")


def harmony_messages(messages: Sequence[dict], tools: Sequence[Any] | None, reasoning_effort: str | None,
                     use_tools: bool = True) -> list:
    from openai_harmony import Author, DeveloperContent, Message, Role, ToolDescription
    try:
        msgs = [system_message(reasoning_effort or "medium")]
    except HarmonyRequestError as e:
        raise bad_request(str(e), "reasoning_effort") from None
    instructions = []
    body = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role")
        if role in ("system", "developer"):
            instructions.append(_text(m.get("content"), where))
        elif role == "user":
            body.append(Message.from_role_and_content(Role.USER, _text(m.get("content"), where)))
        elif role == "assistant":
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            if reasoning:
                body.append(Message.from_role_and_content(Role.ASSISTANT, _text(reasoning, where))
                            .with_channel("analysis"))
            for j, call in enumerate(m.get("tool_calls") or []):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                    raise bad_request(f"{where}.tool_calls[{j}] needs function.name", "messages")
                args = fn.get("arguments") or "{}"
                if not isinstance(args, str):
                    raise bad_request(f"{where}.tool_calls[{j}].function.arguments must be a JSON string", "messages")
                if call.get("id"):
                    call_names[call["id"]] = fn["name"]
                body.append(Message.from_role_and_content(Role.ASSISTANT, args).with_channel("commentary")
                            .with_recipient(f"functions.{fn['name']}").with_content_type("<|constrain|>json"))
            text = _text(m.get("content"), where)
            if text or not (reasoning or m.get("tool_calls")):
                body.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final"))
        elif role == "tool":
            name = call_names.get(m.get("tool_call_id") or "") or m.get("name")
            if not name:
                raise bad_request(f"{where}: tool_call_id {m.get('tool_call_id')!r} matches no earlier assistant "
                                  f"tool call (and the message has no name)", "messages")
            body.append(Message.from_author_and_content(Author.new(Role.TOOL, f"functions.{name}"),
                                                        _text(m.get("content"), where))
                        .with_recipient("assistant").with_channel("commentary"))
        else:
            raise bad_request(f"{where}.role must be system, developer, user, assistant or tool, got {role!r}",
                              "messages")
    dev = DeveloperContent.new()
    if instructions:
        dev = dev.with_instructions("\n\n".join(instructions))
    if tools and use_tools:
        dev = dev.with_function_tools([ToolDescription.new(t.function.name, t.function.description or "",
                                                           parameters=t.function.parameters) for t in tools])
    if instructions or (tools and use_tools):
        msgs.append(Message.from_role_and_content(Role.DEVELOPER, dev))
    return msgs + body


def render_prompt(tokenizer: ServingTokenizer, messages: Sequence[dict], tools=None, reasoning_effort=None,
                  use_tools: bool = True) -> list[int]:
    """The conversation rendered for the assistant's next turn, as the engine's token ids."""
    from openai_harmony import Conversation
    msgs = harmony_messages(messages, tools, reasoning_effort, use_tools)
    ids = render_for_completion(Conversation.from_messages(msgs))
    try:
        return to_engine_ids(tokenizer, ids)
    except HarmonyRequestError as e:
        raise bad_request(f"this model cannot take chat requests: {e}; use /v1/completions") from None
