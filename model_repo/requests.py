"""Request validation shared by the served models. Pure Python (numpy in, plain values out): every error is a
RequestError whose message names the input and the bad value; the models turn it into
`pb_utils.TritonError(message, TritonError.INVALID_ARG)`.

Over the gRPC stream API Triton carries only the error message (ModelStreamInferResponse.error_message), so every
message starts with INVALID_ARG_PREFIX: clients (deploy.client) recognise invalid-argument errors by it. Unary HTTP
and gRPC calls see the status code itself (HTTP 400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from runtime.sampling import MIN_TEMPERATURE, stop_hit
from runtime.scheduler import SHUTDOWN_MESSAGE as SHUTTING_DOWN  # noqa: F401  (one message: the scheduler's)

# Set by deploy.server for the models: the path of a file whose existence means "the server is stopping: end
# every request in flight now, with an error", so Triton's exit finds nothing in flight and unloads cleanly.
DRAIN_FILE_ENV = "GPTOSS_DRAIN_FILE"
# A file serve-engine's watchdog writes when a model's backend process died (deploy/watchdog.py); its text names
# the model. The front model ends the requests waiting on it with that error at once.
CRASH_FILE_ENV = "GPTOSS_CRASH_FILE"

INVALID_ARG_PREFIX = "invalid argument: "


class RequestError(ValueError):
    def __init__(self, message: str):
        super().__init__(message if message.startswith(INVALID_ARG_PREFIX) else INVALID_ARG_PREFIX + message)


def _flat(arr, name: str) -> np.ndarray:
    a = np.asarray(arr)
    return a.reshape(-1)


def batch_size_one(arr, name: str) -> None:
    """Our front models take one prompt per request (shape [1, 1] with the batch dim, or [1])."""
    a = np.asarray(arr)
    if a.ndim >= 1 and a.shape[0] != 1:
        raise RequestError(f"{name} has batch size {a.shape[0]}; send one prompt per request "
                           f"(shape [1, 1]) and run requests concurrently instead")


def scalar(arr, name: str, default=None):
    if arr is None:
        return default
    a = _flat(arr, name)
    if a.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got {a.size}")
    return a[0].item() if hasattr(a[0], "item") else a[0]


def text(arr, name: str, required: bool = True, allow_empty: bool = False) -> str | None:
    if arr is None:
        if required:
            raise RequestError(f"{name} is required")
        return None
    v = scalar(arr, name)
    if isinstance(v, str):
        s = v
    else:
        if not isinstance(v, (bytes, bytearray)):
            raise RequestError(f"{name} must be BYTES (a UTF-8 string)")
        try:
            s = bytes(v).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"{name} is not valid UTF-8 (byte {e.start}: {bytes(v)[e.start:e.start + 1]!r})") from None
    if not allow_empty and not s.strip():
        raise RequestError(f"{name} is empty")
    return s


def texts(arr, name: str) -> list[str]:
    if arr is None:
        return []
    out = []
    for i, v in enumerate(_flat(arr, name)):
        if isinstance(v, str):
            out.append(v)
            continue
        try:
            out.append(bytes(v).decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(f"{name}[{i}] is not valid UTF-8") from None
    return [s for s in out if s]


def boolean(arr, name: str, default: bool = False) -> bool:
    v = scalar(arr, name)
    return default if v is None else bool(v)


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


def sampling(temperature=None, top_p=None, top_k=None, seed=None) -> Sampling:
    """temperature absent or 0: greedy. top_k 0: off. top_p 1: off."""
    s = Sampling()
    t = scalar(temperature, "temperature")
    if t is not None:
        t = float(t)
        if not (t == 0.0 or (math.isfinite(t) and t >= MIN_TEMPERATURE)):
            raise RequestError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {t}")
        s.temperature = t
    p = scalar(top_p, "top_p")
    if p is not None:
        p = float(p)
        if not (math.isfinite(p) and 0.0 < p <= 1.0):
            raise RequestError(f"top_p must be in (0, 1], got {p}")
        s.top_p = p
    k = scalar(top_k, "top_k")
    if k is not None:
        k = int(k)
        if k < 0:
            raise RequestError(f"top_k must be >= 0 (0 = off), got {k}")
        s.top_k = k
    sd = scalar(seed, "seed")
    if sd is not None:
        s.seed = int(sd)
    return s


def output_length(max_tokens, prompt_len: int, max_seq_len: int) -> int:
    n = scalar(max_tokens, "max_tokens")
    if n is None:
        raise RequestError("max_tokens is required")
    n = int(n)
    if prompt_len >= max_seq_len:
        raise RequestError(f"the prompt is {prompt_len} tokens, longer than the engine allows "
                           f"(max_seq_len {max_seq_len}, which must also hold at least one generated token)")
    if n <= 0:
        raise RequestError(f"max_tokens must be > 0, got {n}")
    room = max_seq_len - prompt_len
    if n > room:
        raise RequestError(f"max_tokens {n} goes beyond the context: the prompt is {prompt_len} tokens and "
                           f"max_seq_len is {max_seq_len}, so at most {room} tokens can be generated")
    return n


# return_context_logits sends float32 [prompt_len, vocab]: refuse prompts whose logits would exceed this many bytes
# (gpt-oss's 201088-token vocabulary: about 330 prompt tokens per 256 MiB).
MAX_CONTEXT_LOGITS_BYTES = 256 * 2**20


def check_context_logits_size(prompt_len: int, vocab_size: int, max_bytes: int = MAX_CONTEXT_LOGITS_BYTES) -> None:
    need = 4 * prompt_len * vocab_size
    if need > max_bytes:
        raise RequestError(f"return_context_logits: the prompt is {prompt_len} tokens, and its logits "
                           f"({prompt_len} x {vocab_size} float32 = {need / 2**20:.0f} MiB) exceed the "
                           f"{max_bytes / 2**20:.0f} MiB this server returns; send at most "
                           f"{max_bytes // (4 * vocab_size)} prompt tokens per request")


def token_ids(arr, name: str, vocab_size: int) -> list[int]:
    a = _flat(arr, name)
    if a.size == 0:
        raise RequestError(f"{name} is empty")
    ids = [int(x) for x in a]
    bad = [i for i in ids if i < 0 or i >= vocab_size]
    if bad:
        raise RequestError(f"{name} has token ids outside [0, {vocab_size}): {bad[:5]}")
    return ids


NO_END_ID = -1     # end_id -1: no end token (TensorRT-LLM's meaning): decode to max_tokens or a stop word


def end_id(arr, vocab_size: int) -> int | None:
    """None: not given (the engine's default stop tokens); NO_END_ID; or a token id."""
    v = scalar(arr, "end_id")
    if v is None:
        return None
    v = int(v)
    if v != NO_END_ID and not 0 <= v < vocab_size:
        raise RequestError(f"end_id {v} is outside the vocabulary [0, {vocab_size}) "
                           f"(-1 means no end token)")
    return v


def beam_width(arr) -> None:
    v = scalar(arr, "beam_width")
    if v is not None and int(v) != 1:
        raise RequestError(f"beam_width {int(v)} is not supported; only 1 (no beam search)")


# -- stop words in TensorRT-LLM's [2, L] layout: row 0 the concatenated ids, row 1 the end offset of each
#    sequence, both padded (ids with 0, offsets with -1) -------------------------------------------------------
def pack_stop_words(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    flat, offsets = [], []
    for s in seqs:
        flat.extend(int(t) for t in s)
        offsets.append(len(flat))
    width = max(1, len(flat))
    out = np.zeros((2, width), dtype=np.int32)
    out[1, :] = -1
    out[0, :len(flat)] = flat
    out[1, :len(offsets)] = offsets
    return out


def unpack_stop_words(arr) -> list[list[int]]:
    if arr is None:
        return []
    a = np.asarray(arr)
    if a.ndim == 3:
        if a.shape[0] != 1:
            raise RequestError("stop_words_list has a batch size other than 1")
        a = a[0]
    if a.ndim != 2 or a.shape[0] != 2:
        raise RequestError(f"stop_words_list must have shape [2, L], got {list(a.shape)}")
    seqs, start = [], 0
    for off in a[1]:
        off = int(off)
        if off < 0:
            break
        if off < start or off > a.shape[1]:
            raise RequestError("stop_words_list offsets are not increasing within the ids row")
        if off > start:
            seqs.append([int(t) for t in a[0, start:off]])
        start = off
    return seqs


@dataclass
class StopCriteria:
    """Stop when the last token is in `tokens` or the output ends with one of `sequences`."""
    tokens: set = field(default_factory=set)
    sequences: list = field(default_factory=list)

    def hit(self, output: Sequence[int]) -> bool:
        return stop_hit(list(output), self.tokens, self.sequences)

    @classmethod
    def build(cls, default_stops: Sequence[int], end: int | None, stop_seqs: Sequence[Sequence[int]]):
        """end: None -> the default stop tokens; NO_END_ID -> none; else that token."""
        tokens = set(default_stops) if end is None else (set() if end == NO_END_ID else {end})
        singles = {s[0] for s in stop_seqs if len(s) == 1}
        return cls(tokens | singles, [list(s) for s in stop_seqs if len(s) > 1])
