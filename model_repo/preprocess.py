"""What the `preprocessing` model computes, as one function: Harmony chat rendering (or the raw text), tokenization
and request validation. The `preprocessing` model wraps it for clients that call it; the `tensorrt_llm_bls` model
calls it in its own process, which saves each request a round trip through tritonserver to another stub (measured
on the tiny engine: a few milliseconds of time to first token, on a path whose whole decode step is ~1 ms).

    p = prepare(lambda name: arrays.get(name), tokenizer, max_seq_len=4096, default_effort="medium")
    p.ids, p.max_tokens, p.stop_words ([2, L] int32), p.end_id (requests.NO_END_ID when the caller sent none)

Input names are the preprocessing model's (QUERY, RAW_PROMPT, REASONING_EFFORT, SYSTEM_PROMPT, CHAT_HISTORY,
REQUEST_OUTPUT_LEN, STOP_WORDS_DICT, END_ID); `get(name)` returns the input's numpy array or None. Client mistakes
raise requests.RequestError or harmony.HarmonyRequestError (both ValueErrors: invalid argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from model_repo import requests as rq
from model_repo.harmony import HarmonyRequestError, parse_history, render_chat

# The errors `prepare` raises for a client's mistake (the callers answer them as invalid argument).
CLIENT_ERRORS = (rq.RequestError, HarmonyRequestError)


@dataclass
class Prepared:
    ids: list
    max_tokens: int
    stop_words: np.ndarray      # [2, L] int32, requests.pack_stop_words' layout
    end_id: int                 # requests.NO_END_ID: none sent (the engine's default stop tokens apply)


def prepare(get: Callable[[str], "np.ndarray | None"], tokenizer, max_seq_len: int,
            default_effort: str = "medium") -> Prepared:
    query = get("QUERY")
    if query is None:
        raise rq.RequestError("text_input (QUERY) is required")
    rq.batch_size_one(query, "text_input")
    text = rq.text(query, "text_input")
    if rq.boolean(get("RAW_PROMPT"), "raw_prompt"):
        ids = tokenizer.encode(text)
    else:
        effort = rq.text(get("REASONING_EFFORT"), "reasoning_effort", required=False) or default_effort
        system = rq.text(get("SYSTEM_PROMPT"), "system_prompt", required=False, allow_empty=True)
        history = parse_history(rq.text(get("CHAT_HISTORY"), "chat_history", required=False, allow_empty=True))
        ids = render_chat(tokenizer, text, effort, system or None, history)
    if not ids:
        raise rq.RequestError("text_input tokenizes to nothing")
    max_tokens = rq.output_length(get("REQUEST_OUTPUT_LEN"), len(ids), max_seq_len)
    stop_seqs = [tokenizer.encode(w) for w in rq.texts(get("STOP_WORDS_DICT"), "stop_words")]
    end = rq.end_id(get("END_ID"), tokenizer.vocab_size)
    return Prepared(list(ids), max_tokens, rq.pack_stop_words([s for s in stop_seqs if s]),
                    rq.NO_END_ID if end is None else end)
