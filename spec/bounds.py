"""Declared ranges for every limit and id an engine directory states (engine.json and network.json).

An engine directory is input like any other: a value far outside what any real model or machine has (10^18
sequence tokens, 20,000 layers, a negative head count, an end token outside the vocabulary) would otherwise
size a cache, a Kubernetes object or a loop. Each range is declared once here, wide enough for every model in
the registry with room to grow (gpt-oss-120b: 36 layers, 64 heads, hidden 2880, vocab 201088, 131072 positions),
and narrow enough that no derived size (KV bytes, logits bytes, pod counts) overflows or exhausts a machine.

    check_int("engine.json", "max_seq_len", value, "max_seq_len")   # EngineValueError naming file, key, value, range

Readers do not call this directly: spec.engine_values.read_engine applies it to a whole engine directory, and
spec.network.validate applies the network ranges to every Network it validates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class EngineValueError(ValueError):
    """A value in an engine directory outside its declared range: the message names the file, the key, the value
    and the allowed range."""


@dataclass(frozen=True)
class Bound:
    lo: float
    hi: float
    integer: bool = True
    # Why the range is what it is, for the person who meets the error.
    why: str = ""

    def text(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        return f"{kind} in [{_num(self.lo)}, {_num(self.hi)}]"


def _num(x: float) -> str:
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1:
        x = int(x)
        return f"2^{x.bit_length() - 1}" if x >= 1 << 16 and x & (x - 1) == 0 else str(x)
    return repr(x)


# One row per kind of value. Keys are what the messages say, not file paths: several fields share a kind.
BOUNDS: dict[str, Bound] = {
    # network.json sizes
    "layers": Bound(1, 1024, why="gpt-oss-120b has 36"),
    "vocab_size": Bound(1, 1 << 22, why="o200k_harmony has 201088 tokens"),
    "hidden_size": Bound(1, 1 << 17, why="gpt-oss uses 2880"),
    "heads": Bound(1, 1024, why="gpt-oss has 64 query and 8 key/value heads"),
    "head_dim": Bound(1, 1024, why="gpt-oss uses 64"),
    "features": Bound(1, 1 << 20, why="a linear's in/out features; gpt-oss's largest is 5760"),
    "experts": Bound(1, 4096, why="gpt-oss-120b has 128"),
    "top_k": Bound(1, 256, why="gpt-oss routes to 4"),
    "positions": Bound(1, 1 << 22, why="gpt-oss serves 131072 positions"),
    "window": Bound(1, 1 << 22, why="gpt-oss's sliding window is 128"),
    "sink_tokens": Bound(0, 1 << 16, why="StreamingLLM keeps 4 to 8"),
    "eps": Bound(1e-12, 1.0, integer=False, why="RMSNorm eps; gpt-oss uses 1e-5"),
    "rope_theta": Bound(1.0, 1e12, integer=False, why="gpt-oss uses 150000"),
    "rope_factor": Bound(1.0, 1e4, integer=False, why="YaRN factor; gpt-oss uses 32"),
    "rope_beta": Bound(1e-6, 1e6, integer=False, why="YaRN beta_fast / beta_slow; gpt-oss 32 / 1"),
    "sm_scale": Bound(1e-6, 1e3, integer=False, why="1/sqrt(head_dim) for gpt-oss"),
    "swiglu": Bound(1e-6, 1e6, integer=False, why="SwiGLU alpha / clamp; gpt-oss 1.702 / 7"),
    # engine.json serving limits
    "max_seq_len": Bound(2, 1 << 22, why="tokens one sequence may hold, prompt and output"),
    "max_batch_size": Bound(1, 1 << 16, why="sequences served at once"),
    "gpus": Bound(1, 1024, why="tp / ep: GPUs one engine is split over"),
    "sm": Bound(10, 999, why="a CUDA compute capability as major*10+minor, e.g. 90 or 120"),
    "bytes": Bound(0, float(1 << 50), integer=False, why="a byte count of the fit plan (1 PiB at most)"),
    "plan_count": Bound(0, 1 << 40, why="a count of the fit plan (tokens, sequences, parameters)"),
    "rate": Bound(0, 1e12, integer=False, why="a speed of the fit plan (tokens per second)"),
    "seconds": Bound(0, 1e7, integer=False, why="a duration"),
}


def _where(file: str, key: str) -> str:
    return f"{file}: {key}" if file else key


def check_int(file: str, key: str, value, kind: str) -> int:
    """`value` must be an int (not a bool) inside BOUNDS[kind]."""
    b = BOUNDS[kind]
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineValueError(f"{_where(file, key)} = {_show(value)}: must be {b.text()} ({b.why})")
    if not b.lo <= value <= b.hi:
        raise EngineValueError(f"{_where(file, key)} = {_show(value)}: outside the allowed range, must be "
                               f"{b.text()} ({b.why}); the file was edited or written by another tool, rebuild "
                               f"the engine with build-engine")
    return value


def check_number(file: str, key: str, value, kind: str) -> float:
    """`value` must be an int or float (not a bool, not NaN or infinite) inside BOUNDS[kind]."""
    b = BOUNDS[kind]
    if b.integer:
        return check_int(file, key, value, kind)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineValueError(f"{_where(file, key)} = {_show(value)}: must be {b.text()} ({b.why})")
    if not b.lo <= value <= b.hi:
        raise EngineValueError(f"{_where(file, key)} = {_show(value)}: outside the allowed range, must be "
                               f"{b.text()} ({b.why}); rebuild the engine with build-engine")
    return value


def check_token_ids(file: str, key: str, ids, vocab_size: int | None) -> tuple[int, ...]:
    """Token ids (end / stop tokens) must be ints inside the vocabulary [0, vocab_size)."""
    if not isinstance(ids, (list, tuple)):
        raise EngineValueError(f"{_where(file, key)} = {_show(ids)}: must be an array of token ids")
    if len(ids) > 1024:
        raise EngineValueError(f"{_where(file, key)}: {len(ids)} token ids, more than the 1024 allowed")
    hi = (vocab_size - 1) if vocab_size else BOUNDS["vocab_size"].hi - 1
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= hi:
            inside = f"the vocabulary of {vocab_size} tokens" if vocab_size else "any vocabulary"
            raise EngineValueError(f"{_where(file, f'{key}[{i}]')} = {_show(t)}: not a token id inside {inside}; "
                                   f"allowed: an integer in [0, {hi}]")
    return tuple(ids)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
