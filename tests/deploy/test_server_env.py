"""tritonserver and its stubs run with glibc malloc tunables that return large freed buffers (deploy/server.py;
benchmarks/bench_memory_load.py measured tritonserver's heap flat at 12-13 MiB over 5 heavy rounds with them,
145 -> 313 MiB without). A mechanism check, no RSS threshold."""

from __future__ import annotations

from deploy.server import MALLOC_TUNABLES, server_env


def test_the_server_gets_the_malloc_tunables():
    env = server_env({"PATH": "/usr/bin"})
    assert env["GLIBC_TUNABLES"] == MALLOC_TUNABLES
    assert "glibc.malloc.mmap_threshold=" in MALLOC_TUNABLES


def test_a_callers_own_tunables_win():
    """Negative control: an operator's GLIBC_TUNABLES is left as it is."""
    env = server_env({"PATH": "/usr/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=1"
