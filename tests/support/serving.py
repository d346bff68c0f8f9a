"""Helpers for the serving tests and benchmarks: a tiny engine-like directory, a served repository (served_repo, the
real tritonserver) and a raw stream on its tensorrt_llm model.

make_tiny_engine(dest) copies the shipped tiny checkpoint (builder/assets/tiny: HF config + safetensors +
tokenizer.json with the Harmony specials) and writes an engine.json manifest, which is what build-engine makes for
`--model tiny --gpu cpu` minus the build records; tests do not depend on the build pipeline.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from tests.support import TINY_ASSETS

ASSETS = TINY_ASSETS


def make_tiny_engine(dest: str | Path, max_seq_len: int = 512, max_batch_size: int = 16) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(ASSETS / f, dest / f)
    from spec.manifest import EngineManifest
    EngineManifest(model="tiny", gpu="cpu", quant="bf16", tp=1, ep=1, max_seq_len=max_seq_len,
                   max_batch_size=max_batch_size).write(dest)
    return dest


# Triton 2.51 (nvidia-pytriton's server) now and then never finishes unloading the decoupled BLS model at shutdown:
# every other model unloads, the BLS model's finalize() is never called although none of its requests is in flight
# (its stub logs that), and the server exits 1 when --exit-timeout-secs runs out. Seen in about a third of the runs
# of tests/model_repo/test_triton_server.py, before and after the logprob/context-logits work, never with --log-verbose=1;
# the same class of core unload hang as triton-inference-server/server#8755 (open). Not ours to fix. The same
# hang has also been seen on the ensemble (no Python code of ours runs in it) in runs where a composing model
# answered requests with an error followed by its final response, the pattern a BLS caller needs to see errors.
KNOWN_UNLOAD_HANG_MODEL = "tensorrt_llm_bls"
KNOWN_UNLOAD_HANG_MODELS = {KNOWN_UNLOAD_HANG_MODEL, "ensemble"}


def _stuck_at_exit(log_text: str) -> set[str] | None:
    """The models the server gave up unloading when its exit timeout ran out (None: it did not run out)."""
    from model_repo.write import MODELS
    tail = log_text.split("Signal (15) received.", 1)[-1]
    if "Exit timeout expired" not in tail:
        return None
    return set(MODELS) - set(re.findall(r"successfully unloaded '(\w+)'", tail))


def known_unload_hang(log_text: str) -> bool:
    """The server's log shows that shutdown hang and nothing else wrong at shutdown."""
    stuck = _stuck_at_exit(log_text)
    return bool(stuck) and stuck <= KNOWN_UNLOAD_HANG_MODELS


def assert_stopped_cleanly(rc: int | None, log_file: str | Path) -> None:
    """Exit status 0, or the known upstream unload hang (then a warning says so)."""
    if rc == 0:
        return
    log = Path(log_file).read_text(errors="replace") if Path(log_file).is_file() else ""
    assert known_unload_hang(log), f"tritonserver exit status {rc}; see {log_file}"
    warnings.warn(f"tritonserver exited {rc}: the known Triton 2.51 unload hang of "
                  f"{', '.join(sorted(_stuck_at_exit(log)))} (see tests/support/serving.py); every other model unloaded")


class DeathWatch:
    """Fails a served_repo fast when tritonserver or one of its Python-backend stubs dies (Triton 2.51 itself
    never notices a dead stub: its requests would wait for the clients' own timeouts). The same detection as
    serve-engine's (deploy/watchdog.py): on a dead stub it writes the server's crash file, so requests through
    the front models end within ~0.1 s with an error naming the model, then kills the server, so streams on the
    inner models end at once too and new requests are refused. `message` says what died (None: nothing)."""

    GRACE_S = 0.5          # for the front models to deliver the crash message before the server goes

    def __init__(self, srv):
        import threading

        from deploy.watchdog import StubWatchdog
        self.srv, self.message = srv, None
        self.dog = StubWatchdog(srv.proc.pid)
        self.dog.arm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="served-repo-deathwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import os
        import signal

        from deploy.watchdog import POLL_S
        while not self._stop.wait(POLL_S):
            if not self.srv.alive():
                self.message = (f"tritonserver (pid {self.srv.proc.pid}) exited with status "
                                f"{self.srv.proc.returncode} while serving; see {self.srv.log_path}")
                return
            gone = self.dog.dead()
            if gone is None:
                continue
            self.message = (f"model '{gone.model}' crashed: its Python-backend stub (pid {gone.pid}, instance "
                            f"{gone.instance}) died while serving; see {self.srv.log_path}")
            try:
                self.srv.crash_file.write_text(self.message + "\n", encoding="utf-8")
            except OSError:
                pass
            if not self._stop.wait(self.GRACE_S):
                try:
                    os.killpg(self.srv.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def served_repo(root: Path, *, max_seq_len: int = 512, max_batch_size: int = 16, exit_timeout_s: int = 15,
                **repo_options):
    """The real tritonserver on a model repository written for the tiny engine (write_model_repo's keyword
    arguments in `repo_options`), started under `root`; yields the TritonServer with .engine, .vocab, .log_path
    and .deathwatch (a DeathWatch: a dead server or stub fails the requests at once and the fixture with its
    message). On the way out the server must stop cleanly and leave no shared-memory files."""
    from deploy.server import TritonServer, shm_files
    from model_repo.write import leftover_placeholders, write_model_repo
    engine = make_tiny_engine(root / "engine", max_seq_len=max_seq_len, max_batch_size=max_batch_size)
    repo = write_model_repo(engine, **repo_options)
    assert leftover_placeholders(repo) == []
    srv = TritonServer(repo, log_file=root / "server.log", exit_timeout_s=exit_timeout_s)
    srv.start(timeout_s=240)
    srv.engine, srv.log_path = engine, root / "server.log"
    srv.vocab = json.loads((engine / "config.json").read_text())["vocab_size"]
    srv.deathwatch = DeathWatch(srv)
    try:
        assert shm_files(srv.shm_prefix), "the Python backend should be using shared memory while serving"
        yield srv
    except BaseException:
        srv.deathwatch.close()
        srv.stop()
        raise
    srv.deathwatch.close()
    died = srv.deathwatch.message
    rc = srv.stop()
    assert died is None, died
    assert_stopped_cleanly(rc, srv.log_path)
    assert shm_files(srv.shm_prefix) == [], "shared-memory files left behind"


def stream_tensorrt_llm(url: str, prompt: list[int], max_tokens: int, request_id: str = ""):
    """Start one streaming request on the served `tensorrt_llm` model itself (TensorRT-LLM's tensor names, no end
    token, no stop words); -> (queue of (result, error), the gRPC client, to stop_stream and close)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from deploy.client import infer_inputs
    arrays = {"input_ids": np.array([prompt], dtype=np.int32),
              "input_lengths": np.array([[len(prompt)]], dtype=np.int32),
              "request_output_len": np.array([[max_tokens]], dtype=np.int32), "streaming": np.array([[True]]),
              "end_id": np.array([[-1]], dtype=np.int32), "stop_words_list": np.array([[[0], [-1]]], dtype=np.int32)}
    c = grpcclient.InferenceServerClient(url)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer("tensorrt_llm", infer_inputs(arrays), request_id=request_id, enable_empty_final_response=True)
    return q, c
