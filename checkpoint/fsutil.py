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


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the OS cannot."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def install_dir(tmp: Path, dst: Path) -> None:
    """Move a finished folder to dst. An existing dst is swapped with it in one atomic step where the OS
    allows (so dst is never missing, whenever the process dies), else moved aside first and restored on
    failure; the old contents are then deleted."""
    if not (dst.exists() or dst.is_symlink()):
        os.rename(tmp, dst)
        return
    if _exchange(tmp, dst):
        old = tmp
    else:
        old = dst.parent / f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
    """Leftovers of builds killed mid-write (their process is gone): remove and return them. Where a kill
    fell between the two renames of the fallback swap, dst is missing and its old copy is put back first."""
    stale = []
    for p in sorted(dst.parent.glob(f".{dst.name}.*-*-*")) if dst.parent.is_dir() else []:
        pid = p.name.rsplit("-", 2)[-2]
        if not (p.is_dir() and pid.isdigit()) or _alive(int(pid)):
            continue
        if p.name.startswith(f".{dst.name}.old-") and not dst.exists():
            os.rename(p, dst)
            continue
        shutil.rmtree(p, ignore_errors=True)
        stale.append(p)
    return stale
