"""Suites: regression/suites/<name>.yaml -> Suite (prompts, max_tokens, top_k, held-out segments).

A suite is data. `prompts` are raw text, tokenized as is (no Harmony rendering) so an engine directory and a
served endpoint (`raw_prompt`) see the same ids; generation is greedy for `max_tokens`. `heldout.files` lists
candidate held-out texts (the first that exists wins; paths relative to the suite folder, then the repository
root; an entry may be {path, skip_chars} to skip a preamble); the text is cut into `max_segments` segments of at most `segment_chars` characters, at whitespace, each
scored teacher-forced as one sequence. A suite with `gpu_only: true` documents a GPU run (20b, 120b): it carries
the upstream accuracy references and is refused on a machine without the engine or a GPU.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

SUITES_DIR = Path(__file__).resolve().parent / "suites"
REPO_ROOT = Path(__file__).resolve().parent.parent


class SuiteError(ValueError):
    """A suite that cannot be used (unknown name, bad field, no held-out text). Exit status 2."""


@dataclass
class Suite:
    name: str
    model: str
    prompts: list[str]
    max_tokens: int
    top_k: int
    heldout_file: Path | None
    segments: list[str]
    device: str = "cpu"
    gpu_only: bool = False
    path: Path | None = None
    raw: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 over everything a golden depends on: a golden recorded for another fingerprint is stale."""
        data = {"prompts": self.prompts, "max_tokens": self.max_tokens, "top_k": self.top_k,
                "segments": self.segments}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    f = SUITES_DIR / f"{name_or_path}.yaml"
    if f.is_file():
        return f
    raise SuiteError(f"unknown suite {name_or_path!r}; known suites: {', '.join(available_suites())} "
                     f"(or pass a path to a suite .yaml)")


def _resolve(rel: str, base: Path) -> Path | None:
    p = Path(rel)
    if p.is_absolute():
        return p if p.is_file() else None
    for root in (base, REPO_ROOT):
        if (root / p).is_file():
            return root / p
    # An installed (non-editable) package: builder/assets/... lives inside the `builder` package.
    parts = p.parts
    if parts and parts[0] == "builder":
        try:
            f = resources.files("builder").joinpath(*parts[1:])
            if f.is_file():
                return Path(str(f))
        except (ModuleNotFoundError, TypeError):
            pass
    return None


def split_segments(text: str, segment_chars: int, max_segments: int) -> list[str]:
    """Consecutive pieces of `text` of at most segment_chars characters each, cut at whitespace."""
    words = text.split()
    segments, cur = [], []
    size = 0
    for w in words:
        add = len(w) + (1 if cur else 0)
        if cur and size + add > segment_chars:
            segments.append(" ".join(cur))
            if len(segments) >= max_segments:
                return segments
            cur, size = [], 0
            add = len(w)
        cur.append(w)
        size += add
    if cur and len(segments) < max_segments and (not segments or size >= segment_chars // 4):
        segments.append(" ".join(cur))       # a short tail would add noise, not positions
    return segments


def _need(data: dict, key: str, kind, where: Path):
    if key not in data:
        raise SuiteError(f"{where}: missing field {key!r}")
    v = data[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise SuiteError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a mapping")
    name = _need(data, "name", str, path)
    model = _need(data, "model", str, path)
    prompts = _need(data, "prompts", list, path)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise SuiteError(f"{path}: prompts must be a non-empty list of non-empty strings")
    max_tokens = _need(data, "max_tokens", int, path)
    top_k = _need(data, "top_k", int, path)
    if max_tokens < 1 or top_k < 1:
        raise SuiteError(f"{path}: max_tokens and top_k must be >= 1")
    gpu_only = bool(data.get("gpu_only", False))
    h = _need(data, "heldout", dict, path)
    files = h.get("files") or []
    if isinstance(files, str):
        files = [files]
    heldout, segments, skip = None, [], 0
    for entry in files:
        rel, skip = (entry.get("path"), int(entry.get("skip_chars", 0))) if isinstance(entry, dict) else (entry, 0)
        heldout = _resolve(str(rel), path.parent)
        if heldout is not None:
            break
    if heldout is not None:
        segments = split_segments(heldout.read_text(encoding="utf-8")[skip:], int(h.get("segment_chars", 400)),
                                  int(h.get("max_segments", 8)))
        if skip and segments:
            segments = segments[1:]           # the first one starts mid-word
    elif not gpu_only:
        raise SuiteError(f"{path}: none of the held-out texts exists: {', '.join(map(str, files))}")
    if not segments and not gpu_only:
        raise SuiteError(f"{path}: the held-out text {heldout} is empty")
    return Suite(name=name, model=model, prompts=list(prompts), max_tokens=max_tokens, top_k=top_k,
                 heldout_file=heldout, segments=segments, device=str(data.get("device", "cpu")),
                 gpu_only=gpu_only, path=path, raw=data)
