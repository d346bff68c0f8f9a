"""Notice a dead Python-backend stub under a running tritonserver, so serve-engine can fail loudly.

Triton 2.51 does not notice when a model's stub process dies (SIGKILL, SIGSEGV): requests in flight on it wait for
responses that never come, /v2/health/ready keeps answering 200, and the model is only found broken by the next
request. The watchdog records the stubs (children of the server whose command line is the stub binary; the model is
the folder above `<model>/<version>/model.py` in their arguments) once the server is ready, and `dead()` says which
of them has gone (no such process, or a zombie) a few times a second. serve-engine then (deploy/serve_cli.py):
1. writes the server's crash file (model_repo.requests.CRASH_FILE_ENV) with a message naming the model: the
   front model (tensorrt_llm_bls) ends every request waiting on it with that error within ~0.1 s;
2. marks the OpenAI endpoint down (its /health answers 503, its streams end with the message);
3. kills the server (readiness is gone with it) and restarts it, at most --max-restarts times, then exits 3.

    dog = StubWatchdog(srv.proc.pid); dog.arm()
    gone = dog.dead()       # None, or a DeadStub(pid, model, instance)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"
POLL_S = 0.2
EXIT_STATUS_AFTER_RESTARTS = 3      # serve-engine's exit status once --max-restarts are spent


@dataclass(frozen=True)
class DeadStub:
    pid: int
    model: str
    instance: str

    def message(self) -> str:
        return (f"model '{self.model}' crashed: its Python-backend stub process (pid {self.pid}, instance "
                f"{self.instance}) died; the server is restarting it")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def stub_processes(server_pid: int) -> dict[int, tuple[str, str]]:
    """{pid: (model, instance)} of the live Python-backend stubs the server started."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        st = _stat(int(proc.name))
        if st is None or st[1] != server_pid or st[0] == "Z":
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if not args or not Path(args[0]).name.startswith(STUB_BINARY):
            continue
        model_py = next((a for a in args[1:] if a.endswith(".py")), "")
        model = Path(model_py).parent.parent.name if model_py else "?"
        instance = args[8] if len(args) > 8 else model
        found[int(proc.name)] = (model, instance)
    return found


class StubWatchdog:
    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.watched: dict[int, tuple[str, str]] = {}

    def arm(self) -> dict[int, tuple[str, str]]:
        """Record the stubs running now (call it once the server is ready)."""
        self.watched = stub_processes(self.server_pid)
        return self.watched

    def dead(self) -> DeadStub | None:
        for pid, (model, instance) in self.watched.items():
            st = _stat(pid)
            if st is None or st[0] == "Z" or st[1] != self.server_pid:
                return DeadStub(pid, model, instance)
        return None
