"""An idle served model gives the C heap's freed pages back (model_repo/memory.py); the benchmark that measures the
served processes' memory over rounds is benchmarks/bench_memory_load.py (no RSS threshold in a test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.reliability

# In a fresh interpreter: free 200 MB of small heap blocks (below the mmap threshold, so glibc keeps them in its
# heap), then trim: malloc_trim answers 1 when it gave pages back.
CHILD = """
from model_repo.memory import return_freed_memory
blocks = [bytearray(64 * 1024) for _ in range(3200)]
keep = bytearray(16)            # allocated last: the heap's top stays in use, so only malloc_trim frees the middle
del blocks
print(return_freed_memory())
"""


def test_malloc_trim_gives_freed_heap_back_and_says_so():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "None":
        pytest.skip("not glibc: malloc_trim is absent and return_freed_memory does nothing")
    assert out.stdout.strip() == "True"


def test_without_malloc_trim_nothing_is_called(monkeypatch):
    """Negative control: no C library with malloc_trim to load (as on macOS or musl) makes it a no-op (None)."""
    import ctypes.util

    from model_repo import memory
    monkeypatch.setattr(memory, "_looked", False)
    monkeypatch.setattr(memory, "_trim", None)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libno-such-c-library.so")
    assert memory.return_freed_memory() is None

