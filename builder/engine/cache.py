"""Content-addressed build cache.

The key is a sha256 over everything that decides an engine's bytes: the source files' hashes, the model
config, the GPU's SM, the quant format, the parallel mapping, the options and the tool versions. Entries
are complete engine directories under <cache>/<key>/, installed by rename, so a reader never sees half
of one. Source-file hashes are remembered by (path, size, mtime) so an unchanged rebuild hashes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from checkpoint.fsutil import install_dir, remove_stale_staging, staging_dir
from spec.manifest import MANIFEST_FILE

POLICIES = ("on", "readonly", "redo", "off")
_HASH_CHUNK = 16 * 1024 * 1024


class CacheMiss(RuntimeError):
    pass


def default_cache_dir() -> Path:
    root = os.environ.get("GPTOSS_TRT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptoss-trt"
    return Path(root)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def source_hashes(folder: Path, cache_dir: Path) -> dict[str, str]:
    """sha256 of every file in a checkpoint folder (not recursive), memoised by (path, size, mtime_ns)."""
    memo_file = cache_dir / "file-hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    out, changed = {}, False
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        st = f.stat()
        stamp = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if stamp not in memo:
            memo[stamp], changed = _hash_file(f), True
        out[f.name] = memo[stamp]
    if changed:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_file)
    return out


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


class BuildCache:
    def __init__(self, root: Path, policy: str):
        if policy not in POLICIES:
            raise ValueError(f"--cache-policy {policy!r}: choose one of {', '.join(POLICIES)}")
        self.root, self.policy = Path(root), policy

    def entry(self, key: str) -> Path:
        return self.root / "engines" / key

    def lookup(self, key: str) -> Path | None:
        """The cached engine for key, None to build; raises CacheMiss under 'readonly'."""
        if self.policy in ("off", "redo"):
            return None
        path = self.entry(key)
        if (path / MANIFEST_FILE).is_file():
            return path
        if self.policy == "readonly":
            raise CacheMiss(f"build cache miss for key {key[:16]}... in {self.root} with --cache-policy readonly; "
                            f"build it once with --cache-policy on, or drop readonly")
        return None

    def store(self, key: str, engine_dir: Path) -> None:
        if self.policy in ("off", "readonly"):
            return
        dest = self.entry(key)
        remove_stale_staging(dest)
        tmp = staging_dir(dest)
        try:
            shutil.copytree(engine_dir, tmp, dirs_exist_ok=True)
            install_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
