"""Harmony chat rendering (openai-harmony) and a token-level streaming decoder of the Harmony channels.

Rendering always goes through openai-harmony (o200k_harmony). For an engine with its own tokenizer, the rendered
tokens are mapped over: each special token to that tokenizer's token of the same name (its added tokens must
include the Harmony specials), each run of text between them encoded as plain text, so text a user typed never
becomes a control token.

HarmonyStreamDecoder turns generated token ids into text deltas per channel, exactly the same whether it is fed
one token at a time (streaming) or all at once, so a streamed answer always equals the non-streamed one:
- an assistant message is `[header]<|message|>content<|end|>` where the header holds `<|channel|>NAME` (and maybe a
  recipient / `<|constrain|>`); after `<|end|>` a new message starts with `<|start|>ROLE header`;
- `final` content goes to the answer; `analysis` and `commentary` content to the reasoning text;
- a generation that does not start with a header (untrained or non-Harmony models) is read as `final` content,
  so its text is still returned;
- <|return|> / <|call|> end the answer; special tokens never appear in channel text.
raw=True turns parsing off: every token's text (special tokens included) is `final` text.
"""

from __future__ import annotations

import codecs
import json
import threading
from dataclasses import dataclass, field
from typing import Sequence

from model_repo.tokenizer import ServingTokenizer, ensure_o200k

REASONING_EFFORTS = ("low", "medium", "high")
FINAL, ANALYSIS = "final", "analysis"
# Channels whose text is reported as reasoning (analysis_output); everything else is final text.
REASONING_CHANNELS = ("analysis", "commentary")


class HarmonyRequestError(ValueError):
    """A chat request that cannot be rendered (bad reasoning effort, bad history)."""


_enc = None
_enc_lock = threading.Lock()


def harmony_encoding():
    global _enc
    with _enc_lock:
        if _enc is None:
            ensure_o200k()
            from openai_harmony import HarmonyEncodingName, load_harmony_encoding
            _enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        return _enc


def render_for_completion(conversation) -> list[int]:
    """openai-harmony's render of `conversation` for the assistant's next turn, as o200k_harmony ids. Its Rust
    tokenizer panics (pyo3's PanicException, a BaseException that `except Exception` misses) when its split regex
    runs out of backtracking stack, which a run of about a million characters without a space does: that is the
    client's text, so it becomes a HarmonyRequestError (invalid argument, without the panic's traceback and paths)."""
    from openai_harmony import Role
    try:
        return list(harmony_encoding().render_conversation_for_completion(conversation, Role.ASSISTANT))
    except BaseException as e:  # noqa: BLE001 - only the native panic is turned into a request error
        if type(e).__name__ != "PanicException":
            raise
        longest = max((len(w) for m in conversation.messages for c in m.content for w in str(getattr(c, "text", "")).split()),
                      default=0)
        raise HarmonyRequestError(f"the conversation could not be tokenized (openai-harmony gave up: {str(e)[:120]}); "
                                  f"its longest run of characters without whitespace is {longest:,}: break such runs "
                                  f"up or shorten the prompt") from None


def system_message(reasoning_effort: str = "medium"):
    """The Harmony system message (openai-harmony's defaults: identity, knowledge cutoff, channels) with this
    reasoning effort."""
    from openai_harmony import Message, ReasoningEffort, Role, SystemContent
    effort = (reasoning_effort or "medium").strip().lower()
    if effort not in REASONING_EFFORTS:
        raise HarmonyRequestError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, got {reasoning_effort!r}")
    levels = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
    return Message.from_role_and_content(Role.SYSTEM, SystemContent.new().with_reasoning_effort(levels[effort]))


def render_chat_tokens(user: str, reasoning_effort: str = "medium", system_prompt: str | None = None,
                       history: Sequence[dict] = ()) -> list[int]:
    """A conversation rendered for completion by the assistant, as o200k_harmony ids:
    system (reasoning effort) [+ developer instructions] + history + the user turn + `<|start|>assistant`.
    history: [{"role": "user"|"assistant", "content": str}, ...] (assistant turns as `final` channel)."""
    from openai_harmony import Conversation, DeveloperContent, Message, Role
    msgs = [system_message(reasoning_effort)]
    if system_prompt:
        msgs.append(Message.from_role_and_content(Role.DEVELOPER, DeveloperContent.new().with_instructions(system_prompt)))
    for i, turn in enumerate(history):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise HarmonyRequestError(f"history[{i}] must be an object with a string 'content'")
        role = turn.get("role")
        if role == "user":
            msgs.append(Message.from_role_and_content(Role.USER, turn["content"]))
        elif role == "assistant":
            msgs.append(Message.from_role_and_content(Role.ASSISTANT, turn["content"]).with_channel(FINAL))
        else:
            raise HarmonyRequestError(f"history[{i}].role must be 'user' or 'assistant', got {role!r}")
    msgs.append(Message.from_role_and_content(Role.USER, user))
    return render_for_completion(Conversation.from_messages(msgs))


def parse_history(text: str | None) -> list[dict]:
    if not text:
        return []
    try:
        hist = json.loads(text)
    except json.JSONDecodeError as e:
        raise HarmonyRequestError(f"chat history is not valid JSON: {e}") from None
    except RecursionError:
        raise HarmonyRequestError("chat history is nested too deeply; send a flat JSON list of "
                                  "{\"role\", \"content\"} objects") from None
    if not isinstance(hist, list):
        raise HarmonyRequestError("chat history must be a JSON list of {\"role\", \"content\"} objects")
    return hist


def render_chat(tokenizer: ServingTokenizer, user: str, reasoning_effort: str = "medium",
                system_prompt: str | None = None, history: Sequence[dict] = ()) -> list[int]:
    """The rendered conversation as ids of `tokenizer` (o200k_harmony ids directly; otherwise re-encoded text)."""
    return to_engine_ids(tokenizer, render_chat_tokens(user, reasoning_effort, system_prompt, history))


def to_engine_ids(tokenizer: ServingTokenizer, ids: Sequence[int]) -> list[int]:
    """o200k_harmony ids rendered by openai-harmony -> ids of `tokenizer` (the same ids for o200k_harmony; else the
    text, special tokens as their strings, encoded with the engine's tokenizer, which must have the specials)."""
    ids = list(ids)
    if tokenizer.kind == "o200k_harmony":
        return ids
    missing = [t for t in ("<|start|>", "<|end|>", "<|message|>", "<|channel|>") if tokenizer.special_id(t) is None]
    if missing:
        raise HarmonyRequestError(f"the engine's tokenizer lacks the Harmony special tokens {missing}; "
                                  f"send raw prompts (raw_prompt=true) or add them to tokenizer.json")
    return _reencode(tokenizer, ids)


def _reencode(tokenizer: ServingTokenizer, ids: Sequence[int]) -> list[int]:
    """o200k_harmony ids -> the same conversation in `tokenizer`'s ids: each special token the renderer emitted
    becomes that tokenizer's special token; every run of text between them is encoded as plain text, so a
    `<|start|>` typed by a user (in the message, system prompt or history) stays text, as the renderer meant."""
    enc = harmony_encoding()
    out: list[int] = []
    run: list[int] = []

    def flush():
        if run:
            out.extend(tokenizer.encode_plain(enc.decode_utf8(run)))
            run.clear()
    for i in ids:
        if enc.is_special_token(int(i)):
            flush()
            name = enc.decode_utf8([int(i)])
            sid = tokenizer.special_id(name)
            if sid is None:
                raise HarmonyRequestError(f"the engine's tokenizer lacks the Harmony special token {name}; "
                                          f"send raw prompts (raw_prompt=true) or add it to tokenizer.json")
            out.append(sid)
        else:
            run.append(int(i))
    flush()
    return out


# ----------------------------------------------------------------------------------------------------------
@dataclass
class DecodedText:
    final: str = ""
    analysis: str = ""
    channels: dict = field(default_factory=dict)   # every channel's text, including the two above

    def add(self, channel: str, text: str) -> None:
        if not text:
            return
        self.channels[channel] = self.channels.get(channel, "") + text
        if channel in REASONING_CHANNELS:
            self.analysis += text
        else:
            self.final += text


class HarmonyStreamDecoder:
    def __init__(self, tokenizer: ServingTokenizer, raw: bool = False, header_limit: int = 48):
        self.tok = tokenizer
        self.raw = raw
        self.header_limit = header_limit
        ids = tokenizer.harmony_ids()
        self.START, self.END, self.MESSAGE = ids.get("<|start|>"), ids.get("<|end|>"), ids.get("<|message|>")
        self.CHANNEL, self.CONSTRAIN = ids.get("<|channel|>"), ids.get("<|constrain|>")
        self.STOPS = {ids[t] for t in ("<|return|>", "<|call|>") if t in ids}
        self.specials = set(ids.values())
        # The prompt ends with `<|start|>assistant`: generation begins in a header whose role is already given.
        self.state = "content" if raw else "header"
        self.channel = FINAL
        self.first_header_token = True
        self.header: list[int] = []
        self.done = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    # -- helpers -------------------------------------------------------------------------------------------
    def _text(self, token_id: int) -> str:
        return self._utf8.decode(self.tok.token_bytes(token_id))

    def _flush_bytes(self, out: DecodedText) -> None:
        out.add(self.channel, self._utf8.decode(b"", final=True))
        self._utf8.reset()

    def _header_channel(self) -> str:
        name = FINAL
        if self.CHANNEL in self.header:
            i = self.header.index(self.CHANNEL) + 1
            rest = b"".join(self.tok.token_bytes(t) for t in self.header[i:] if t not in self.specials)
            # channel name: up to the first space / recipient / end of header
            word = rest.decode("utf-8", errors="replace").strip().split(" ")[0].split("<")[0]
            name = word or FINAL
        return name

    def _looks_like_header_start(self, token_id: int) -> bool:
        if token_id in (self.CHANNEL, self.CONSTRAIN, self.MESSAGE):
            return True
        if token_id in self.specials:
            return False
        b = self.tok.token_bytes(token_id).lstrip()
        return b.startswith(b"to") and (len(b) <= 2 or b[2:3] in (b"=", b" "))

    # -- main ---------------------------------------------------------------------------------------------
    def feed(self, token_ids: Sequence[int]) -> DecodedText:
        out = DecodedText()
        for t in token_ids:
            t = int(t)
            if self.done:
                break
            if self.raw:
                out.add(self.channel, self._text(t))
                continue
            if self.state == "header":
                if t in self.STOPS:
                    self.done = True
                    break
                if self.first_header_token and not self._looks_like_header_start(t):
                    # No Harmony header: read the generation as final content.
                    self.state, self.channel = "content", FINAL
                    self.first_header_token = False
                    out.add(self.channel, self._text(t))
                    continue
                self.first_header_token = False
                if t == self.MESSAGE:
                    self.channel = self._header_channel()
                    self.header = []
                    self.state = "content"
                    continue
                self.header.append(t)
                if len(self.header) > self.header_limit:
                    # Not a header after all: give its text back as final content.
                    self.state, self.channel = "content", FINAL
                    for h in self.header:
                        if h not in self.specials:
                            out.add(self.channel, self._text(h))
                    self.header = []
                continue
            if self.state == "content":
                if t in self.STOPS:
                    self._flush_bytes(out)
                    self.done = True
                    break
                if t == self.END:
                    self._flush_bytes(out)
                    self.state = "expect_start"
                    continue
                if t in self.specials:
                    continue          # a stray special token is never text
                out.add(self.channel, self._text(t))
                continue
            # expect_start: only <|start|> opens a new message; anything else is dropped.
            if t == self.START:
                self.state, self.header, self.first_header_token = "header", [], False
            elif t in self.STOPS:
                self.done = True
        return out

    def finish(self) -> DecodedText:
        out = DecodedText()
        if self.state == "header" and self.header and not self.raw:
            # A generation cut inside a header: nothing of it is channel text.
            self.header = []
        self._flush_bytes(out)
        return out


def decode_completion(tokenizer: ServingTokenizer, token_ids: Sequence[int], raw: bool = False) -> DecodedText:
    """All of a completion at once (what the postprocessing model does)."""
    d = HarmonyStreamDecoder(tokenizer, raw=raw)
    out = d.feed(token_ids)
    tail = d.finish()
    for ch, text in tail.channels.items():
        out.add(ch, text)
    return out
