"""Fixtures the OpenAI-endpoint tests share: serve-engine --openai-port on the tiny engine (a real tritonserver
behind it), started once per test module, and the official openai client on it."""

from __future__ import annotations

import pytest

from tests.support.openai_server import ServedTiny


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    """The served endpoint, with the module's SERVED dict as ServedTiny's options (max_batch_size, max_seq_len,
    extra_args: more serve-engine flags).
    .while_loading holds what it answered a chat request sent before Triton had loaded the model."""
    s = ServedTiny(tmp_path_factory.mktemp("openai"), **getattr(request.module, "SERVED", {}))
    try:
        s.while_loading = s.answer_while_loading()
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(request, served):
    """The openai client on `served`; each request is bounded by the module's CLIENT_TIMEOUT_S (60 s if unset)."""
    return served.openai_client(getattr(request.module, "CLIENT_TIMEOUT_S", 60))
