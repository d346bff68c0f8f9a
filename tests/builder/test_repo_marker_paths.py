"""The Triton repository a build writes names its engine by a path that survives the install: relative inside
the engine (so the pair moves together), absolute to the final engine otherwise; never the staging folder the
build wrote it in (checkpoint.fsutil.staging_dir: `.NAME.partial-...`, removed once the engine is installed)."""

from __future__ import annotations

import json
from pathlib import Path

from model_repo.write import REPO_MARKER, write_model_repo


def _texts(repo: Path) -> dict[str, str]:
    return {str(f.relative_to(repo)): f.read_text(encoding="utf-8") for f in sorted(repo.rglob("*")) if f.is_file()}


def test_built_repo_names_no_staging_path(built_tiny_cpu):
    repo = built_tiny_cpu / "triton"
    texts = _texts(repo)
    assert REPO_MARKER in texts and "tensorrt_llm/config.pbtxt" in texts
    for name, text in texts.items():
        assert ".partial-" not in text, f"{name} names the build's staging folder"
    marker = json.loads(texts[REPO_MARKER])
    assert marker["engine_dir"] == ".." and (repo / marker["engine_dir"]).resolve() == built_tiny_cpu.resolve()


def test_moved_engine_still_resolves(built_tiny_cpu_copy):
    marker = json.loads((built_tiny_cpu_copy / "triton" / REPO_MARKER).read_text(encoding="utf-8"))
    assert (built_tiny_cpu_copy / "triton" / marker["engine_dir"]).resolve() == built_tiny_cpu_copy.resolve()


def test_repo_outside_the_engine_records_the_engine_absolute(built_tiny_cpu, tmp_path):
    repo = write_model_repo(built_tiny_cpu, tmp_path / "elsewhere" / "repo")
    marker = json.loads((repo / REPO_MARKER).read_text(encoding="utf-8"))
    assert marker["engine_dir"] == str(built_tiny_cpu.resolve())
    assert not any(".partial-" in t for t in _texts(repo).values())
