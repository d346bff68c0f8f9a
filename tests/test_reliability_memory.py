"""Prompt logits (return_context_logits) are let go of when their request finishes, and one request cannot ask
for more than the cap (benchmarks/context_logits_memory.py measures the served models' memory over rounds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.client import InvalidRequestError, LLMClient
from deploy.server import TritonServer
from deploy.testing import assert_stopped_cleanly, make_tiny_engine
from model_repo.generate import write_model_repo

CONCURRENT = 8


def test_a_finished_request_holds_no_prompt_logits():
    import gc
    import weakref

    import torch
    from deploy.testing import ASSETS
    from model_repo.inflight import GenRequest, InflightBatcher
    from runtime import Runtime
    torch.set_num_threads(1)
    b = InflightBatcher(Runtime.from_dir(ASSETS), max_batch_size=4).start()
    seen, done = [], []
    try:
        for i in range(3):
            req = GenRequest(f"r{i}", [5 + i] * 300, 3, return_context_logits=True)
            req.emit = lambda tokens, reason, message, req=req: (
                reason and (seen.append(weakref.ref(req.context_logits)), done.append(req)))
            b.submit(req)
        deadline = __import__("time").monotonic() + 120
        while len(done) < 3 and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.05)
    finally:
        b.stop()
    assert len(done) == 3
    gc.collect()
    # the logits were there for the final response, and nothing holds them after it
    assert all(r.context_logits is None for r in done) and all(ref() is None for ref in seen)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-mem")
    engine = make_tiny_engine(root / "engine", max_seq_len=2048, max_batch_size=CONCURRENT)
    repo = write_model_repo(engine, max_context_logits_bytes=16 * 2**20)
    srv = TritonServer(repo, log_file=root / "server.log", exit_timeout_s=5)
    srv.start(timeout_s=240)
    yield srv
    assert_stopped_cleanly(srv.stop(), root / "server.log")


def test_one_request_beyond_the_cap_is_a_clear_error(server):
    with pytest.raises(InvalidRequestError, match="return_context_logits"):
        LLMClient(server.grpc_url).generate("word " * 1500, 2, raw=True, return_context_logits=True)
