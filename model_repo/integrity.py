"""The engine's Triton repository is code: serve what the build wrote, nothing else.

Triton's Python backend imports every `model.py` under the repository it is given and loads every model folder
there, so an engine directory from anywhere (a shared volume, a download) could run code in the server. The
build records a sha256 of every file under ENGINE/triton in engine.json (`triton_sha256`); serve-engine
verifies the folder against it before any server starts and refuses an extra, missing or edited file, a link or
anything that is not a regular file, naming them.

    record_repo(engine_dir)           # -> {relative path: sha256}, stored by write_model_repo into engine.json
    verify_repo(engine_dir, recorded) # IntegrityError naming what differs, and the fix

`__pycache__` files count as extra: a .pyc beside model.py is code Python prefers to the source, which is why
the served models run with PYTHONDONTWRITEBYTECODE (deploy/server.py) and write none.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

TRITON_DIR = "triton"
# A repository we write holds a dozen files; a folder far larger is not ours, and walking it costs time.
MAX_FILES = 1000
_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """The engine's triton/ folder is not the one its build recorded (extra, missing or edited files, links)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root, by POSIX relative path; IntegrityError on a link or a special
    file (a FIFO would block the reader, a link could point anywhere)."""
    root = Path(root)
    out: dict[str, str] = {}
    pending = [root]
    while pending:
        folder = pending.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise IntegrityError(f"{path}: a symbolic link inside the engine's {TRITON_DIR}/ folder; the build "
                                     f"writes only regular files there (rebuild the engine, or remove the link)")
            if stat.S_ISDIR(mode):
                pending.append(path)
            elif stat.S_ISREG(mode):
                out[rel] = _sha256(path)
            else:
                raise IntegrityError(f"{path}: not a regular file (a FIFO, socket or device) inside the engine's "
                                     f"{TRITON_DIR}/ folder; remove it")
            if len(out) + len(pending) > MAX_FILES:
                raise IntegrityError(f"{root}: more than {MAX_FILES} entries; not a repository build-engine wrote")
    return dict(sorted(out.items()))


def record_repo(engine_dir: str | Path) -> dict[str, str]:
    return hash_tree(Path(engine_dir) / TRITON_DIR)


def verify_repo(engine_dir: str | Path, recorded: dict) -> None:
    """ENGINE/triton must hold exactly the recorded files with the recorded contents."""
    repo = Path(engine_dir) / TRITON_DIR
    actual = hash_tree(repo)
    extra = sorted(set(actual) - set(recorded))
    missing = sorted(set(recorded) - set(actual))
    edited = sorted(k for k in set(actual) & set(recorded) if actual[k] != recorded[k])
    if extra or missing or edited:
        parts = [f"{what}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
                 for what, names in (("extra", extra), ("missing", missing), ("edited", edited)) if names]
        raise IntegrityError(f"{repo}: not the model repository the build wrote ({'; '.join(parts)}), and Triton "
                             f"runs the Python files it finds there; rebuild the engine, or pass --backend "
                             f"reference|trtllm|auto to serve a repository written afresh from engine.json")
