"""Prompt logits (return_context_logits) are let go of when their request finishes, and one request cannot ask
for more than the cap (benchmarks/context_logits_memory.py measures the served models' memory over rounds)."""

from __future__ import annotations

import pytest

from deploy.client import InvalidRequestError, LLMClient

pytestmark = pytest.mark.reliability

CONCURRENT = 8
# The served glue checked against the reference runtime (the `rt` oracle), so served on that executor; ONNX
# Runtime serving: tests/deploy/test_backend_crash.py and benchmarks/bench_serving.py.
TRITON = dict(max_seq_len=2048, max_batch_size=CONCURRENT, exit_timeout_s=15, max_context_logits_bytes=16 * 2**20, executor="reference")


def test_a_finished_request_holds_no_prompt_logits():
    """Once a request's final response is out, the scheduler keeps nothing of it: its prompt logits live only as
    long as the caller keeps the request (the served model drops them as soon as they are sent)."""
    import gc
    import time
    import weakref

    import torch

    from runtime import Runtime
    from runtime.sampling import SamplingParams
    from runtime.scheduler import Request, Scheduler
    from tests.support.serving import ASSETS
    torch.set_num_threads(1)
    b = Scheduler(Runtime.from_dir(ASSETS).model, max_batch_size=4).start()
    seen, done = [], []
    try:
        for i in range(3):
            req = Request(f"r{i}", [5 + i] * 300, SamplingParams(max_tokens=3, prompt_logits=True))
            req.emit = lambda tokens, reason, message, req=req: (
                reason and (seen.append(weakref.ref(req.context_logits)), done.append(req)))
            b.submit(req)
        deadline = time.monotonic() + 120
        while len(done) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(done) == 3
        assert all(ref() is not None for ref in seen)       # the logits were there for the final response
        for r in done:
            r.emit = None
        done.clear()
        del req, r
        gc.collect()
        assert all(ref() is None for ref in seen)           # and the running scheduler holds none of them
    finally:
        b.stop()


def test_one_request_beyond_the_cap_is_a_clear_error(server):
    with pytest.raises(InvalidRequestError, match="return_context_logits"):
        LLMClient(server.grpc_url).generate("word " * 1500, 2, raw=True, return_context_logits=True)
