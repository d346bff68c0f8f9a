"""Fixtures shared across the test layers. Layer-specific ones live beside their tests: tests/runtime/conftest.py
(`rt` of a module's random model), tests/model_repo/conftest.py (`rt` as served, `server`: a real tritonserver)
and tests/deploy/conftest.py (`served`: serve-engine with the OpenAI endpoint, `client`: the openai client).
Helpers that are not fixtures (checkpoints, oracles, served processes) are in tests/support/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.serving import make_tiny_engine


@pytest.fixture(scope="module")
def built_tiny_cpu(tmp_path_factory) -> Path:
    """The tiny model built for the CPU target by build-engine (the real build, once per module)."""
    from builder.engine.build import BuildRequest, build
    out = tmp_path_factory.mktemp("engines") / "tiny"
    build(BuildRequest(model="tiny", gpu="cpu", output=str(out), cache_dir=str(tmp_path_factory.mktemp("cache")),
                       progress=False))
    return out


@pytest.fixture()
def built_tiny_cpu_copy(built_tiny_cpu, tmp_path) -> Path:
    """A copy of built_tiny_cpu at tmp_path/engine, for tests that tamper with it."""
    import shutil
    dest = tmp_path / "engine"
    shutil.copytree(built_tiny_cpu, dest, symlinks=True)
    return dest


@pytest.fixture()
def tiny_engine(tmp_path) -> Path:
    """A fresh engine directory of the shipped tiny model at tmp_path/engine: its checkpoint, tokenizer and an
    engine.json (tests.support.serving.make_tiny_engine's defaults: max_seq_len 512, max_batch_size 16)."""
    return make_tiny_engine(tmp_path / "engine")
