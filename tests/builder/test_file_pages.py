"""builder/tensorrt/file_pages.py: releasing a read-only file mapping's pages lowers this process's resident
set (the kernel's own count, /proc/self/smaps) and leaves the bytes readable and unchanged; a writable mapping
is never touched (its dirty pages would be lost)."""

import mmap
import os
import sys

import numpy as np
import pytest

from builder.tensorrt.file_pages import read_only_mappings, release, released_file_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
MIB = 2 ** 20


def _rss_kb(path) -> int:
    """Rss of this process's mappings of `path`, from /proc/self/smaps (the kernel's count)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                inside = len(head) == 6 and head[5] == str(path.resolve())
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "model.onnx.data"
    payload = np.random.default_rng(0).integers(0, 255, 16 * MIB, dtype=np.uint8).tobytes()
    path.write_bytes(payload)
    return path, payload


def _touch(m) -> None:
    for off in range(0, len(m), mmap.PAGESIZE):
        m[off]


def test_release_unmaps_resident_pages_and_keeps_the_bytes(data_file):
    path, payload = data_file
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        _touch(m)
        before = _rss_kb(path)
        assert before >= 15 * 1024, before                      # the 16 MiB are resident
        assert read_only_mappings({path})
        assert release({path}) >= 16 * MIB
        after = _rss_kb(path)
        assert after < before / 8, (before, after)
        assert m[:] == payload                                  # faulted back in, same bytes


def test_background_release_during_a_block(data_file):
    path, payload = data_file
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        _touch(m)
        assert _rss_kb(path) >= 15 * 1024
        import time
        with released_file_pages({path}, interval=0.05):
            time.sleep(0.5)                                     # as a C++ build that released the GIL
            assert _rss_kb(path) < 2 * 1024
        assert m[:] == payload


def test_writable_mapping_is_left_alone(data_file):
    """Negative control: a writable shared mapping keeps its pages (and its unsaved edit)."""
    path, _ = data_file
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        _touch(m)
        m[0] = (m[0] + 1) % 256
        edited = m[0]
        before = _rss_kb(path)
        assert read_only_mappings({path}) == []
        assert release({path}) == 0
        assert _rss_kb(path) == before
        assert m[0] == edited
