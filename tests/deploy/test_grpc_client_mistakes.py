"""Client mistakes on the gRPC front (serve-engine's tritonserver, the official tritonclient over a stream): each is
an invalid-argument answer that names the input, never a server fault, and no message carries the server's
file paths or a traceback. Decoupled models take only ModelStreamInfer, whose errors are a message without a gRPC
status code; "invalid argument: " (ours) or Triton's own request-check phrasing is what deploy.client.classify
reads as INVALID_ARGUMENT, and that is asserted here.

The 16 MB prompt of one run without spaces used to reach openai-harmony's Rust tokenizer panic (a PanicException,
which `except Exception` misses) and came back as the stub's traceback: site-packages and model.py paths."""

from __future__ import annotations

import queue
import re

import numpy as np
import pytest

from deploy.client import InvalidRequestError, classify

pytestmark = pytest.mark.reliability

SERVED = dict(max_batch_size=4)
MODELS = ("tensorrt_llm_bls", "ensemble")
# What a path or a traceback looks like in a message: an absolute path, a Python frame, a Rust source location.
LEAKS = re.compile(r"(/[\w.+-]+){2,}|\.py\(\d+\)|\bAt:\n|site-packages|\.rs:\d+")


def _tensor(name, arr):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype
    t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def _text(s):
    return np.array([[s.encode() if isinstance(s, str) else s]], dtype=np.object_)


def _i32(v):
    return np.array([[v]], dtype=np.int32)


def _answer(url: str, model: str, arrays: dict) -> str | None:
    """The first answer of a streamed request: its error message, or None when it was answered."""
    import tritonclient.grpc as grpcclient
    c = grpcclient.InferenceServerClient(url)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        c.async_stream_infer(model, [_tensor(k, v) for k, v in arrays.items()], enable_empty_final_response=True)
        result, error = q.get(timeout=180)
        return None if error is None else error.message()
    finally:
        c.stop_stream()
        c.close()


HI = {"text_input": _text("hi"), "max_tokens": _i32(2)}
MISTAKES = {
    "16 MB prompt without spaces": ({"text_input": _text("a" * 16 * 2**20), "max_tokens": _i32(2)}, "tokenized"),
    "16 MB prompt of words": ({"text_input": _text("word " * (16 * 2**20 // 5)), "max_tokens": _i32(2)}, "prompt"),
    "max_tokens int64": ({**HI, "max_tokens": np.array([[2**62]], dtype=np.int64)}, "max_tokens"),
    "max_tokens 2^31-1": ({**HI, "max_tokens": _i32(2**31 - 1)}, "max_tokens"),
    "end_id 2^31-1": ({**HI, "end_id": _i32(2**31 - 1)}, "end_id"),
    "text_input as INT32": ({**HI, "text_input": _i32(5)}, "text_input"),
    "text_input of shape [1, 2]": ({**HI, "text_input": np.array([[b"a", b"b"]], dtype=np.object_)}, "text_input"),
    "temperature as a string": ({**HI, "temperature": _text("hot")}, "temperature"),
    "temperature NaN": ({**HI, "temperature": np.array([[np.nan]], dtype=np.float32)}, "temperature"),
    "text_input not UTF-8": ({**HI, "text_input": _text(b"\xff\xfe")}, "text_input"),
    "chat_history nested 100,000 deep": ({**HI, "chat_history": _text("[" * 100_000 + "]" * 100_000)}, "history"),
}


def test_a_good_request_is_answered(served):
    """Negative control: the same helper on a well-formed request gets an answer, not an error."""
    assert _answer(served.grpc_url, "tensorrt_llm_bls", HI) is None


def test_the_leak_pattern_finds_what_the_panic_used_to_send():
    """Negative control of the check itself, on the message the server sent before the fix (shortened)."""
    before = ("Failed to process the request(s) for model 'preprocessing_0_0', message: PanicException: called "
              "`Result::unwrap()` on an `Err` value: RuntimeError(StackOverflow)\n\nAt:\n  /srv/.venv/lib/python3.11/"
              "site-packages/openai_harmony/__init__.py(469): render_conversation_for_completion\n")
    assert LEAKS.search(before)
    assert not isinstance(classify(before), InvalidRequestError)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_client_mistake_is_invalid_argument_without_paths(served, model, case):
    arrays, names = MISTAKES[case]
    message = _answer(served.grpc_url, model, arrays)
    assert message is not None, f"{case}: answered instead of refused"
    assert isinstance(classify(message), InvalidRequestError), f"{case}: not an invalid argument: {message[:300]!r}"
    assert not LEAKS.search(message), f"{case}: the message shows server internals: {message[:300]!r}"
    assert names in message, f"{case}: the message does not name {names!r}: {message[:300]!r}"
    # The server keeps serving after each mistake.
    assert _answer(served.grpc_url, model, HI) is None
