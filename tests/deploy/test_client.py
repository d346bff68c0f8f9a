"""The gRPC client without a server: error classification, retries on UNAVAILABLE, request tensors."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from deploy.client import (
    ClientError,
    InvalidRequestError,
    LLMClient,
    RequestTimeoutError,
    ServerUnavailableError,
    build_inputs,
    classify,
)
from deploy.server import free_port


def test_classify():
    assert isinstance(classify("invalid argument: max_tokens must be > 0, got 0"), InvalidRequestError)
    assert isinstance(classify("in ensemble 'ensemble', invalid argument: text_input is empty"), InvalidRequestError)
    assert isinstance(classify("[request id: <id_unknown>] inference input 'max_tokens' data-type is 'FP32', "
                               "but model 'tensorrt_llm_bls' expects 'INT32'"), InvalidRequestError)
    assert isinstance(classify("x", "StatusCode.INVALID_ARGUMENT"), InvalidRequestError)
    assert isinstance(classify("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), ServerUnavailableError)
    assert isinstance(classify("slow", "StatusCode.DEADLINE_EXCEEDED"), RequestTimeoutError)
    e = classify("generation failed: RuntimeError: boom")
    assert type(e) is ClientError


def test_unavailable_server_is_retried_then_reported():
    c = LLMClient(f"127.0.0.1:{free_port()}", retries=2, retry_backoff_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError):
        c.generate("hi", 4)
    assert time.monotonic() - t0 >= 0.2 + 0.4          # backoff 0.2 s, then 0.4 s: three attempts
    assert not c.is_ready()


def test_request_tensors_use_trtllm_names_and_dtypes():
    ins = {i.name(): i for i in build_inputs("hi", 8, stream=True, temperature=0.5, top_p=0.9, top_k=4, seed=9,
                                             stop_words=["x"], end_id=3, reasoning_effort="low",
                                             system_prompt="s", history=[{"role": "user", "content": "a"}],
                                             raw=False)}
    assert {n: (i.datatype(), i.shape()) for n, i in ins.items()} == {
        "text_input": ("BYTES", [1, 1]), "max_tokens": ("INT32", [1, 1]), "stream": ("BOOL", [1, 1]),
        "temperature": ("FP32", [1, 1]), "top_p": ("FP32", [1, 1]), "top_k": ("INT32", [1, 1]),
        "seed": ("UINT64", [1, 1]), "stop_words": ("BYTES", [1, 1]), "end_id": ("INT32", [1, 1]),
        "reasoning_effort": ("BYTES", [1, 1]), "system_prompt": ("BYTES", [1, 1]),
        "chat_history": ("BYTES", [1, 1])}
    extra = build_inputs(b"\xff", 1, stream=False, extra={"beam_width": np.array([[2]], dtype=np.int32)})
    assert [i.name() for i in extra] == ["text_input", "max_tokens", "stream", "beam_width"]


def test_cli_exit_code_when_the_server_is_down():
    r = subprocess.run([sys.executable, "-m", "deploy.client_cli", "generate", "hi", "--url", f"127.0.0.1:{free_port()}",
                        "--retries", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "server unavailable" in r.stderr
