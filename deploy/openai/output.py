"""Generated token ids -> OpenAI deltas (reasoning_content, content, tool_calls), one token at a time, so a
streamed answer is the non-streamed one cut into pieces.

- HarmonyOutput (the model's tokenizer is o200k_harmony): openai-harmony's StreamableParser reads the channels;
  `analysis` (and commentary without a function recipient) -> reasoning_content, `final` -> content, a commentary
  message `to=functions.NAME` -> a tool call whose arguments are its content. Output that is not Harmony (no header
  within HEADER_LIMIT tokens, a token the grammar does not allow) raises HarmonyOutputError at that token.
- TextOutput (any other tokenizer, and /v1/completions): the tokens' text, special tokens left out, as content.
- StopStrings holds back content that could be the start of a `stop` string and cuts the text before one.
"""

from __future__ import annotations

import codecs
import uuid
from dataclasses import dataclass, field

from model_repo.tokenizer import ServingTokenizer

HEADER_LIMIT = 64     # tokens: a real header (channel, recipient, content type) is a handful


class HarmonyOutputError(RuntimeError):
    """The model's output is not a Harmony assistant turn."""


@dataclass
class ToolCallDelta:
    index: int
    arguments: str
    id: str | None = None        # set on the first delta of a call
    name: str | None = None


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def extend(self, other: "Delta") -> None:
        self.reasoning += other.reasoning
        self.content += other.content
        self.tool_calls += other.tool_calls


class TextOutput:
    def __init__(self, tokenizer: ServingTokenizer):
        self.tok = tokenizer
        self.skip = set(tokenizer.harmony_ids().values()) | set(tokenizer.stop_ids())
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.called_tools = False

    def feed(self, token_id: int) -> Delta:
        if token_id in self.skip:
            return Delta()
        return Delta(content=self._utf8.decode(self.tok.token_bytes(token_id)))

    def finish(self, truncated: bool) -> Delta:
        return Delta(content=self._utf8.decode(b"", final=True))


class HarmonyOutput:
    def __init__(self):
        from openai_harmony import Role, StreamableParser, StreamState
        from model_repo.harmony import harmony_encoding
        self.enc = harmony_encoding()
        self.parser = StreamableParser(self.enc, Role.ASSISTANT)
        self._HEADER = StreamState.HEADER
        self._CONTENT = StreamState.CONTENT
        self.n = 0
        self.header_tokens = 0
        self.message_index = -1       # the message the parser is in (counted at its first content token)
        self.tool_index = -1
        self.in_tool_call = False
        self.called_tools = False

    def feed(self, token_id: int) -> Delta:
        from openai_harmony import HarmonyError
        p = self.parser
        was_content = p.state == self._CONTENT
        try:
            p.process(int(token_id))
        except HarmonyError as e:
            raise HarmonyOutputError(f"the model's output is not valid Harmony at generated token {self.n} "
                                     f"(id {token_id}): {e}") from None
        finally:
            self.n += 1
        if p.state == self._HEADER:
            self.header_tokens += 1
            if self.header_tokens > HEADER_LIMIT:
                raise HarmonyOutputError(f"the model's output is not valid Harmony: no message header ended within "
                                         f"{HEADER_LIMIT} tokens (generated token {self.n - 1})")
            return Delta()
        self.header_tokens = 0
        if p.state != self._CONTENT:
            self.in_tool_call = False
            return Delta()
        out = Delta()
        if not was_content:          # a message's content begins
            recipient = p.current_recipient or ""
            self.in_tool_call = recipient.startswith("functions.")
            if self.in_tool_call:
                self.tool_index += 1
                self.called_tools = True
                out.tool_calls.append(ToolCallDelta(self.tool_index, "", id=f"call_{uuid.uuid4().hex[:24]}",
                                                    name=recipient[len("functions."):]))
        text = p.last_content_delta or ""
        if not text:
            return out
        if self.in_tool_call:
            out.tool_calls.append(ToolCallDelta(self.tool_index, text))
        elif p.current_channel == "final":
            out.content = text
        else:
            out.reasoning = text
        return out

    def finish(self, truncated: bool) -> Delta:
        """The generation ended. A turn cut by max_tokens may end anywhere; one the model ended itself must be
        complete."""
        from openai_harmony import HarmonyError
        if truncated:
            return Delta()
        try:
            self.parser.process_eos()
        except HarmonyError as e:
            raise HarmonyOutputError(f"the model's output is not valid Harmony at its end: {e}") from None
        return Delta()


class StopStrings:
    """Cuts content before the first `stop` string; feed() returns what is safe to send now."""

    def __init__(self, stops: list[str]):
        self.stops = list(stops)
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if not self.stops or self.hit:
            return "" if self.hit else text
        buf = self.pending + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            self.pending = ""
            return buf[:cut]
        keep = 0
        for s in self.stops:      # the longest tail of buf that starts some stop string
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.pending = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep] if keep else buf

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.hit else out
