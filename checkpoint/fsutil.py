"""Filesystem moves that never leave a half-written result where the user looks."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Mapping

from checkpoint.errors import CheckpointError


_HASH_CHUNK = 16 * 1024 * 1024


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks (checkpoint shards are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class UnsafeOutputError(CheckpointError):
    """An output path that would overwrite or delete what the user has (a source, or a folder not ours)."""


def real_path(path: str | os.PathLike) -> Path:
    """Absolute, with every symlink resolved, also for a path that does not exist yet."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def check_output_apart(output: str | os.PathLike, sources: Mapping[str, str | os.PathLike | None],
                       what: str = "output", inside_ok: bool = False) -> None:
    """Refuse an output that is a source, contains one, or (unless inside_ok) lies inside one. Paths are
    compared after resolving symlinks, so a link to the source folder is the source folder."""
    out = real_path(output)
    for label, src in sources.items():
        if src is None:
            continue
        s = real_path(src)
        if out == s:
            how = "is"
        elif s.is_relative_to(out):
            how = "contains"
        elif out.is_relative_to(s) and not inside_ok:
            how = "lies inside"
        else:
            continue
        raise UnsafeOutputError(f"{what} {output} overlaps {label} {src}: resolved, {out} {how} {s}, so writing "
                                f"it could replace or delete the source; fix: choose a {what} apart from {label}")


def check_replaceable(dst: str | os.PathLike, is_ours: Callable[[Path], bool], what: str, kind: str) -> None:
    """An existing dst may be replaced only if it is one of ours (`is_ours`, e.g. has our manifest) or empty."""
    dst = Path(dst)
    if not (dst.exists() or dst.is_symlink()):
        return
    if dst.is_symlink() and not dst.exists():
        raise UnsafeOutputError(f"{what} {dst} is a dangling symlink; fix: remove it or choose another {what}")
    if not dst.is_dir():
        raise UnsafeOutputError(f"{what} {dst} exists and is not a directory; fix: choose another {what}")
    if is_ours(dst):
        return
    try:
        empty = next(dst.iterdir(), None) is None
    except OSError as e:
        raise UnsafeOutputError(f"{what} {dst} cannot be listed ({e.strerror}); fix: choose another {what}") from None
    if not empty:
        raise UnsafeOutputError(f"{what} {dst} exists and is not {kind} (nor empty); replacing it would delete "
                                f"its files; fix: choose a new or empty {what}, or remove that folder yourself")


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


def install_dir(tmp: Path, dst: Path, replaceable: Callable[[Path], None] | None = None) -> None:
    """Move a finished folder to dst. An existing dst is swapped with it in one atomic step where the OS
    allows (so dst is never missing, whenever the process dies), else moved aside first and restored on
    failure; the old contents are then deleted. `replaceable(dst)` raises if an existing dst must stay."""
    if replaceable is not None:
        replaceable(dst)
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


def link_tree(src: Path, dst: Path) -> str | None:
    """Recreate the folder tree `src` at `dst` (which must not exist or be empty) with every file hard-linked, so
    the bytes are on disk once. Where a link is impossible (another filesystem, or one without hard links) the
    files are copied instead; returns None when all were linked, else the reason they were copied (callers say
    so). Linked files share their inode: replace such a file by rename (as every writer here does), never
    write it in place."""
    import errno
    copied_because = None
    dst.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(src):
        here = Path(root)
        rel = here.relative_to(src)
        for d in dirs:
            (dst / rel / d).mkdir(exist_ok=True)
        for name in files:
            a, b = here / name, dst / rel / name
            if copied_because is None:
                try:
                    os.link(a, b, follow_symlinks=False)
                    continue
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    copied_because = f"{e.strerror} ({a} -> {b.parent})"
            shutil.copy2(a, b, follow_symlinks=False)
    return copied_because


def unique_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of the files under folder with each inode counted once, the part of those no path outside the
    folder links to: what deleting the folder frees)."""
    inodes: dict[tuple[int, int], list] = {}
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            entry = inodes.setdefault((st.st_dev, st.st_ino), [st.st_size, st.st_nlink, 0])
            entry[2] += 1
    total = sum(size for size, _, _ in inodes.values())
    alone = sum(size for size, nlink, inside in inodes.values() if nlink <= inside)
    return total, alone


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
    import re
    # Only names staging_dir and install_dir make (.NAME.TAG-PID-8hex): a user's ".NAME.old-2024-01" stays.
    ours = re.compile(rf"\.{re.escape(dst.name)}\.[a-z]+-(\d+)-[0-9a-f]{{8}}")
    stale = []
    for p in sorted(dst.parent.glob(f".{dst.name}.*-*-*")) if dst.parent.is_dir() else []:
        m = ours.fullmatch(p.name)
        if not (m and p.is_dir() and not p.is_symlink()) or _alive(int(m.group(1))):
            continue
        if p.name.startswith(f".{dst.name}.old-") and not dst.exists():
            os.rename(p, dst)
            continue
        shutil.rmtree(p, ignore_errors=True)
        stale.append(p)
    return stale
