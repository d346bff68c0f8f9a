"""Give the C heap's freed memory back to the system once a served model goes idle.

A round of long prompts leaves the `tensorrt_llm` stub holding its peak: the prefill's activations and the prompt
logits are freed, but glibc keeps freed heap pages (in every thread's arena) for reuse, so the stub's private
memory stays at the round's peak until the next round reuses it (benchmarks/bench_memory_load.py measured
~900 MiB held by an idle stub after 16 concurrent 3,900-token requests). malloc_trim(0) returns the free pages
of all arenas; it walks the heap, so it runs only when the last request in flight has finished, never per step.
Not glibc (musl, macOS): nothing to call, nothing done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_trim = None
_looked = False
_lock = threading.Lock()


def _malloc_trim():
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _trim = fn
        except (OSError, AttributeError):
            _trim = None
    return _trim


def return_freed_memory() -> bool | None:
    """malloc_trim(0): True if it gave memory back, False if there was none to give, None without glibc."""
    with _lock:
        fn = _malloc_trim()
        return None if fn is None else bool(fn(0))

