"""The ONNX Runtime executor's temporary export folders (runtime/executors/onnxruntime.py) do not outlive their
process: removed at exit even when the executor is still referenced (the served model's scheduler thread holds
it to the end), and a folder left by a process that was killed outright is swept by the next load."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from runtime.executors.onnxruntime import EXPORT_PREFIX, OWNER_FILE, new_export_dir, sweep_dead_exports
from tests.support.runtime import hf_model

ROOT = Path(__file__).resolve().parents[2]


def _load_and_exit(tmp_path: Path, exit_how: str) -> list[Path]:
    """A process that loads the ONNX Runtime executor (exporting to a temporary folder under tmp_path), keeps it
    alive from a daemon thread, as the served model's scheduler does, and exits `exit_how`; -> the folders left."""
    script = textwrap.dedent(f"""
        import os, sys, threading, time
        sys.path.insert(0, {str(ROOT)!r})
        from runtime.executors.onnxruntime import load_onnxruntime
        rt = load_onnxruntime({str(hf_model("odd")[1])!r}, threads=1)
        assert rt.model._workdir.is_dir()
        threading.Thread(target=lambda held=rt: time.sleep(600), daemon=True).start()
        del rt
        {"os._exit(0)" if exit_how == "_exit" else "sys.exit(0)"}
    """)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return sorted(tmp_path.glob(f"{EXPORT_PREFIX}*"))


def test_the_export_folder_is_removed_when_the_process_exits(tmp_path):
    assert _load_and_exit(tmp_path, "normal") == []


def test_a_killed_process_folder_is_swept_by_the_next_load(tmp_path):
    # Negative control of the test above: a process that dies without running its exit handlers leaves it.
    [left] = _load_and_exit(tmp_path, "_exit")
    assert (left / "model.onnx").is_file()
    assert sweep_dead_exports(tmp_path) == [left] and not left.exists()


def test_the_sweep_leaves_live_and_foreign_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    mine = new_export_dir()                                   # this process is alive
    foreign = tmp_path / f"{EXPORT_PREFIX}1-abc"              # no owner file: not made by this executor
    foreign.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other_ns = tmp_path / f"{EXPORT_PREFIX}{dead.stdout.strip()}-xyz"    # a dead pid, another pid namespace
    other_ns.mkdir()
    (other_ns / OWNER_FILE).write_text("pid:[1]", encoding="utf-8")
    assert sweep_dead_exports(tmp_path) == []
    assert mine.is_dir() and foreign.is_dir() and other_ns.is_dir()
