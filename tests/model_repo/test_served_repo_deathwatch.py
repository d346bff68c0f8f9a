"""The serving tests' harness (tests/support/serving.served_repo) fails fast when a Python-backend stub dies: a
stream through the front model ends with an error naming the model, a stream on the inner model ends too, both
within 5 s of the SIGKILL (Triton 2.51 alone leaves them waiting for the client's own timeout), and the fixture
fails with the same message."""

from __future__ import annotations

import os
import queue
import signal
import time

import numpy as np
import pytest

from tests.support.serving import served_repo, stream_tensorrt_llm


def _stream_bls(url: str, text: str, max_tokens: int):
    import tritonclient.grpc as grpcclient

    from deploy.client import infer_inputs
    arrays = {"text_input": np.array([[text.encode()]], dtype=np.object_),
              "max_tokens": np.array([[max_tokens]], dtype=np.int32), "stream": np.array([[True]]),
              "raw_prompt": np.array([[True]]), "end_id": np.array([[-1]], dtype=np.int32)}
    c = grpcclient.InferenceServerClient(url)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer("tensorrt_llm_bls", infer_inputs(arrays), enable_empty_final_response=True)
    return q, c


def _until_error(q, deadline: float) -> str | None:
    """Responses until an error (-> its message) or a final response / the deadline (-> None)."""
    while time.monotonic() < deadline:
        try:
            result, error = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if error is not None:
            return str(error)
        if result.get_response().parameters["triton_final_response"].bool_param:
            return None
    return None


def test_a_killed_stub_ends_the_streams_and_fails_the_fixture(tmp_path):
    with pytest.raises(AssertionError, match="model 'tensorrt_llm' crashed") as failed:
        # The reference executor decodes the tiny model at ~70 tok/s: 400 tokens outlast the kill by seconds.
        with served_repo(tmp_path, executor="reference") as srv:
            [pid] = [p for p, (model, _) in srv.deathwatch.dog.watched.items() if model == "tensorrt_llm"]
            bls_q, bls_c = _stream_bls(srv.grpc_url, "hello there", 400)
            direct_q, direct_c = stream_tensorrt_llm(srv.grpc_url, [17, 18, 19, 20], 400)
            try:
                for q in (bls_q, direct_q):          # both are streaming tokens before the kill
                    result, error = q.get(timeout=60)
                    assert error is None and result.as_numpy("output_ids") is not None, error
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                bls_error = _until_error(bls_q, killed + 5)
                bls_s = time.monotonic() - killed
                direct_error = _until_error(direct_q, killed + 5)
                direct_s = time.monotonic() - killed
            finally:
                for c in (bls_c, direct_c):
                    c.stop_stream()
                    c.close()
            assert bls_error and "model 'tensorrt_llm' crashed" in bls_error and bls_s < 5, (bls_error, bls_s)
            assert direct_error and direct_s < 5, (direct_error, direct_s)
            assert srv.deathwatch.message and not srv.alive()
    assert str(srv.log_path) in str(failed.value)
