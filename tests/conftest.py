"""Fixtures shared across the test layers. Layer-specific ones live beside their tests: tests/runtime/conftest.py
(`rt` of a module's random model), tests/model_repo/conftest.py (`rt` as served, `server`: a real tritonserver)
and tests/deploy/conftest.py (`served`: serve-engine with the OpenAI endpoint, `client`: the openai client).
Helpers that are not fixtures (checkpoints, oracles, served processes) are in tests/support/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.serving import make_tiny_engine


@pytest.fixture()
def tiny_engine(tmp_path) -> Path:
    """A fresh engine directory of the shipped tiny model at tmp_path/engine: its checkpoint, tokenizer and an
    engine.json (tests.support.serving.make_tiny_engine's defaults: max_seq_len 512, max_batch_size 16)."""
    return make_tiny_engine(tmp_path / "engine")
