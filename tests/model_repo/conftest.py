"""Fixtures the served-model tests share: the tiny Runtime as the served model runs it, and the real tritonserver
on a repository written for the tiny engine, each made once per test module."""

from __future__ import annotations

import pytest

from tests.support.serving import ASSETS, served_repo


@pytest.fixture(scope="module")
def rt():
    """The shipped tiny model's Runtime at one CPU thread, as served: tiny matmuls gain nothing from more, and an
    oversubscribed box loses a lot. The thread count is restored after the module."""
    import torch

    from runtime import Runtime
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Runtime.from_dir(ASSETS)
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """tritonserver on the tiny engine's repository, once per module; the module's TRITON dict holds served_repo's
    options (max_seq_len, max_batch_size, exit_timeout_s, write_model_repo's keyword arguments)."""
    with served_repo(tmp_path_factory.mktemp("triton"), **getattr(request.module, "TRITON", {})) as srv:
        yield srv
