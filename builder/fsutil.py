"""Filesystem moves that never leave a half-written result where the user looks."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def staging_dir(dst: Path, tag: str = "partial") -> Path:
    """A fresh hidden folder beside dst (same filesystem, so the final rename is atomic)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def install_dir(tmp: Path, dst: Path) -> None:
    """Move a finished folder to dst; an existing dst is swapped aside first and restored on failure."""
    if not (dst.exists() or dst.is_symlink()):
        os.rename(tmp, dst)
        return
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(dst: Path) -> list[Path]:
    """Leftovers of builds killed mid-write (their process is gone): remove and return them."""
    stale = []
    for p in dst.parent.glob(f".{dst.name}.*-*-*") if dst.parent.is_dir() else []:
        pid = p.name.rsplit("-", 2)[-2]
        if p.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            stale.append(p)
    return stale
