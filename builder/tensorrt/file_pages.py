"""Keep a plan build's resident set to what the builder owns: release the pages of the graph's external data
file that TensorRT's ONNX parser maps into the process.

TensorRT(-RTX)'s `parse_from_file` maps the external data file and reads every weight through that mapping;
the builder then copies the weights into its own memory for the plan. Both copies are resident at the peak:
on the 20b-shaped 2-layer graph the mapped file was 3.3 GB of the build's 7.1 GB VmHWM (RssFile 3.3 GB +
RssAnon 3.6 GB, sampled each second), so the full 20b (a 14 GB graph) would peak near twice its weights.
The mapped pages are clean copies of a file on disk: `madvise(MADV_DONTNEED)` on a mapping that cannot be
written (no `w` in /proc/self/maps) only unmaps them from this process; the page cache keeps them while memory
allows, and a later read faults the same bytes back in. So nothing changes but the resident set.

    with released_file_pages({Path("tensorrt/model.onnx.data")}):    # a thread, every `interval` seconds
        builder.build_serialized_network_to_stream(...)             # releases the GIL, so the thread runs

Linux only (reads /proc/self/maps, calls libc's madvise); elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from pathlib import Path

MADV_DONTNEED = 4          # linux/mman-common.h
MAPS = "/proc/self/maps"
INTERVAL_S = 0.5           # how stale the released range may get: the parser reads ~1 GB/s here


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return libc


def read_only_mappings(paths: set[Path], maps: str = MAPS) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `paths` that cannot be written (perms without `w`)."""
    wanted = {str(p.resolve()) for p in paths}
    out = []
    with open(maps) as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].rstrip("\n") in wanted and "w" not in parts[1]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def release(paths: set[Path], libc=None) -> int:
    """Unmap the resident pages of the read-only mappings of `paths` once; returns the bytes of address range
    advised (not all of it was resident)."""
    libc = libc or _libc()
    advised = 0
    for lo, hi in read_only_mappings(paths):
        if libc.madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            advised += hi - lo
    return advised


@contextmanager
def released_file_pages(paths: set[Path], interval: float = INTERVAL_S):
    """While the block runs, release `paths`' mapped pages every `interval` seconds (a daemon thread)."""
    if not paths or not os.path.exists(MAPS):
        yield
        return
    libc = _libc()
    stop = threading.Event()

    def loop():
        while not stop.wait(interval):
            release(paths, libc)

    thread = threading.Thread(target=loop, name="release-graph-pages", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
