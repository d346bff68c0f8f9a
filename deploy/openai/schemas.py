"""Request bodies of /v1/chat/completions and /v1/completions (pydantic). Field names and ranges are OpenAI's;
fields this server cannot honour are refused (400) when set to anything but their default, and fields it does not
know are ignored, as OpenAI-compatible servers do (clients send vendor extras)."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deploy.openai.errors import bad_request


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool = False


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["function"]
    function: FunctionDef


class _Sampling(BaseModel):
    """What both endpoints share."""
    model_config = ConfigDict(extra="allow", strict=True)
    model: str
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    seed: Optional[int] = Field(default=None, ge=0, lt=2 ** 64)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    max_tokens: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    # vLLM's extension, which load generators (aiperf, genai-perf) send for fixed-length decodes.
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if v is None:
            return []
        v = [v] if isinstance(v, str) else v
        if any(not s for s in v):
            raise ValueError("stop strings must not be empty")
        if len(v) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(v)}")
        return v

    def _check_common(self) -> None:
        if self.n != 1:
            raise bad_request(f"n={self.n} is not supported: this server returns one choice per request (n=1)", "n")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream=true", "stream_options")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_request(f"{name} is not supported by this server (leave it unset or 0)", name)
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by this server", "logit_bias")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    reasoning_effort: Optional[Literal["low", "medium", "high"]] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto"], dict, None] = None
    parallel_tool_calls: Optional[bool] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    response_format: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _check(self):
        self._check_common()
        if isinstance(self.tool_choice, dict):
            raise bad_request("tool_choice naming a function is not supported; use \"auto\" or \"none\"", "tool_choice")
        if self.logprobs:
            raise bad_request("logprobs is not supported by the chat endpoint", "logprobs")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise bad_request("response_format other than text is not supported", "response_format")
        return self

    def token_limit(self) -> tuple[int | None, str]:
        """(limit, the field it came from): max_completion_tokens wins over the older max_tokens."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int]]
    max_tokens: Optional[int] = 16           # OpenAI's default for the completions endpoint
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    @model_validator(mode="after")
    def _check(self):
        self._check_common()
        if self.echo:
            raise bad_request("echo is not supported by this server", "echo")
        if self.logprobs:
            raise bad_request("logprobs is not supported by this server", "logprobs")
        if self.suffix:
            raise bad_request("suffix is not supported by this server", "suffix")
        if self.best_of not in (None, 1):
            raise bad_request("best_of is not supported by this server (n=1 only)", "best_of")
        if isinstance(self.prompt, list):
            if not self.prompt:
                raise bad_request("prompt is empty", "prompt")
            if isinstance(self.prompt[0], str) and len(self.prompt) != 1:
                raise bad_request(f"one prompt per request, got {len(self.prompt)}; send them as separate "
                                  f"(concurrent) requests", "prompt")
        elif not self.prompt:
            raise bad_request("prompt is empty", "prompt")
        return self

    def token_limit(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"
