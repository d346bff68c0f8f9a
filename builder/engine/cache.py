"""Content-addressed build cache.

The key is a sha256 over everything that decides an engine's bytes: the source files' hashes, the model
config, the GPU's SM, the quant format, the parallel mapping, the options and the tool versions. Entries
are complete engine directories under <cache>/engines/<key>/, installed by rename, so a reader never sees
half of one. Source-file hashes are remembered by (path, size, mtime) so an unchanged rebuild hashes nothing.

No second copy: an entry's files are hard links to the installed engine's (and a cache hit links them into
--output), so a cached engine costs its bytes once; across filesystems they are copied and a log line says
so. Every writer of engine files replaces them by rename, so a link is never written through. The cache
holds at most a size limit (GPTOSS_TRT_CACHE_MAX_GB, default 100 GB, or --cache-max-gb): past it the least
recently used entries (<cache>/used/<key>'s mtime, touched on store and on every hit) are evicted.
`build-engine --cache-info [--json]` says what it holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from checkpoint.fsutil import install_dir, link_tree, remove_stale_staging, sha256_file, staging_dir, unique_bytes

POLICIES = ("on", "readonly", "redo", "off")
MAX_GB_ENV = "GPTOSS_TRT_CACHE_MAX_GB"
DEFAULT_MAX_GB = 100.0
GB = 1e9


def _say(msg: str) -> None:
    print(f"build-engine: {msg}", file=sys.stderr, flush=True)


def default_max_bytes() -> int:
    """The size limit: $GPTOSS_TRT_CACHE_MAX_GB (GB = 10^9 bytes), else 100 GB."""
    raw = os.environ.get(MAX_GB_ENV)
    try:
        gb = DEFAULT_MAX_GB if raw in (None, "") else float(raw)
    except ValueError:
        raise CacheConfigError(f"{MAX_GB_ENV}={raw!r} is not a number of GB; fix: set it to e.g. 100, or unset it") from None
    if gb < 0:
        raise CacheConfigError(f"{MAX_GB_ENV}={raw!r} is negative; fix: a size in GB >= 0")
    return int(gb * GB)


@dataclass
class CacheEntry:
    key: str
    model: str | None
    gpu: str | None
    quant: str | None
    bytes: int            # the entry's files, each inode once
    bytes_cache_only: int  # of those, what no installed engine links to (what evicting it frees)
    last_used: float      # seconds since the epoch

    def to_dict(self) -> dict:
        return {**asdict(self), "last_used_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_used))}


class CacheMiss(RuntimeError):
    pass


class CacheConfigError(ValueError):
    """A cache setting (policy, size limit) that makes no sense; the message names it and the fix."""


def default_cache_dir() -> Path:
    root = os.environ.get("GPTOSS_TRT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptoss-trt"
    return Path(root)


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
            memo[stamp], changed = sha256_file(f), True
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
    def __init__(self, root: Path, policy: str = "on", max_bytes: int | None = None):
        if policy not in POLICIES:
            raise CacheConfigError(f"--cache-policy {policy!r}: choose one of {', '.join(POLICIES)}")
        self.root, self.policy = Path(root), policy
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)

    def entry(self, key: str) -> Path:
        return self.root / "engines" / key

    def _used_stamp(self, key: str) -> Path:
        return self.root / "used" / key

    def touch(self, key: str) -> None:
        stamp = self._used_stamp(key)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        os.utime(stamp)

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, least recently used first."""
        from spec.manifest import EngineManifest, ManifestError
        folder = self.root / "engines"
        out = []
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name.startswith(".") or not (path / "engine.json").is_file():
                continue
            try:
                m = EngineManifest.read(path)
                model, gpu, quant = m.model, m.gpu, m.quant
            except ManifestError:
                model = gpu = quant = None
            stamp = self._used_stamp(path.name)
            used = stamp.stat().st_mtime if stamp.exists() else (path / "engine.json").stat().st_mtime
            total, alone = unique_bytes(path)
            out.append(CacheEntry(path.name, model, gpu, quant, total, alone, used))
        return sorted(out, key=lambda e: e.last_used)

    def evict(self, keep: str | None = None) -> list[CacheEntry]:
        """Remove least recently used entries until the cache fits max_bytes; `keep` (the entry just stored)
        goes last, and only if it alone is over the limit. Returns what was removed."""
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        order = [e for e in entries if e.key != keep] + [e for e in entries if e.key == keep]
        removed = []
        for e in order:
            if total <= self.max_bytes:
                break
            shutil.rmtree(self.entry(e.key), ignore_errors=True)
            self._used_stamp(e.key).unlink(missing_ok=True)
            total -= e.bytes
            removed.append(e)
            _say(f"cache: evicted {e.key[:16]} ({e.model} {e.gpu} {e.quant}, {e.bytes / GB:.2f} GB, last used "
                 f"{e.to_dict()['last_used_iso']}): the cache is limited to {self.max_bytes / GB:.2f} GB "
                 f"({MAX_GB_ENV} or --cache-max-gb)")
        return removed

    def info(self) -> dict:
        entries = self.entries()
        return {"root": str(self.root), "max_bytes": self.max_bytes, "bytes": sum(e.bytes for e in entries),
                "bytes_cache_only": sum(e.bytes_cache_only for e in entries),
                "entries": [e.to_dict() for e in reversed(entries)]}       # most recently used first

    def install_from(self, key: str, staging: Path) -> None:
        """Link the cached engine for key into an empty staging folder (copied across filesystems)."""
        copied = link_tree(self.entry(key), staging)
        if copied:
            _say(f"cache: copied the cached engine instead of hard-linking it (the cache and --output are on "
                 f"different filesystems, or links are refused: {copied}); it now takes its bytes twice")
        self.touch(key)

    def lookup(self, key: str) -> Path | None:
        """The cached engine for key, None to build; raises CacheMiss under 'readonly'."""
        if self.policy in ("off", "redo"):
            return None
        path = self.entry(key)
        if (path / "engine.json").is_file():
            self.touch(key)
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
            copied = link_tree(engine_dir, tmp)
            install_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if copied:
            _say(f"cache: copied the engine into the cache instead of hard-linking it (another filesystem, or "
                 f"links refused: {copied}); it takes its bytes twice")
        self.touch(key)
        self.evict(keep=key)


def format_info(info: dict) -> str:
    """`build-engine --cache-info`: one line per entry, most recently used first, then the total and limit."""
    rows = [("key", "model", "gpu", "quant", "GB", "GB cache-only", "last used")]
    rows += [(e["key"][:16], str(e["model"]), str(e["gpu"]), str(e["quant"]), f"{e['bytes'] / GB:.3f}",
              f"{e['bytes_cache_only'] / GB:.3f}", e["last_used_iso"]) for e in info["entries"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"build cache {info['root']}: {len(info['entries'])} entries, {info['bytes'] / GB:.3f} GB "
             f"({info['bytes_cache_only'] / GB:.3f} GB not linked from an installed engine) of a "
             f"{info['max_bytes'] / GB:.2f} GB limit ({MAX_GB_ENV} or --cache-max-gb)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
