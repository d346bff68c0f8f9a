"""The fixture the runtime tests share: the Runtime of a module's random tiny model, loaded once per module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def rt(request):
    """Runtime.from_dir of tests.support.runtime's hf_model(KEY) (a random transformers model, saved), KEY being the
    module's key into tests.support.runtime.CONFIGS."""
    from runtime import Runtime
    from tests.support.runtime import hf_model
    return Runtime.from_dir(hf_model(request.module.KEY)[1])
