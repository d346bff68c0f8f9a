"""engine-regression --report: apart from the engines it reads, a write failure (unwritable folder, full disk)
is exit 2 with a message, never the regression status, and report.png without matplotlib is a clear note."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from regression.ci import build_engines
from regression.cli import main as regression
from tests.support import REPO

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel-report")
    built, failed = build_engines(root, ["bf16"], cache_dir=str(root / "cache"))
    assert "bf16" in built, failed
    return built["bf16"]


@pytest.fixture(scope="module")
def goldens(engine, tmp_path_factory):
    d = tmp_path_factory.mktemp("goldens")
    assert regression([str(engine), "--record", "--goldens", str(d)]) == 0
    return d


def _digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_report_inside_or_around_the_engine_is_refused(engine, goldens, capsys):
    before = _digest(engine)
    for report in (engine, engine.parent, engine / "report"):
        assert regression([str(engine), "--goldens", str(goldens), "--report", str(report)]) == 2
        assert "--report" in capsys.readouterr().err
    assert _digest(engine) == before


def test_unwritable_report_is_exit_2_before_the_run(engine, goldens, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert regression([str(engine), "--goldens", str(goldens), "--report", str(tmp_path / "a-file" / "r")]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and "Traceback" not in err


def test_full_disk_while_writing_the_report_is_exit_2(engine, goldens, tmp_path, capsys):
    report = tmp_path / "r"
    report.mkdir()
    os.symlink("/dev/full", report / "report.json")          # every write to it fails with ENOSPC
    assert regression([str(engine), "--goldens", str(goldens), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert "could not write the report" in err and "No space left" in err


def test_without_matplotlib_the_report_says_the_plot_was_skipped(engine, goldens, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    assert regression([str(engine), "--goldens", str(goldens), "--report", str(tmp_path / "r")]) == 0
    out = capsys.readouterr()
    assert "plot skipped: matplotlib is not installed" in out.err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["passed"]
    assert "plot skipped" in (tmp_path / "r" / "report.md").read_text()
    assert not (tmp_path / "r" / "report.png").exists()


def test_matplotlib_is_a_main_dependency():
    import tomllib
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(d.startswith("matplotlib") for d in meta["project"]["dependencies"])
