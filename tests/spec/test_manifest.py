"""engine.json is one typed EngineManifest: every reader refuses a manifest it cannot read, with one message."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from spec.manifest import MANIFEST_FILE, SCHEMA_VERSION, EngineManifest, ManifestError
from tests.support import BIN


def _edit(engine: Path, **changes) -> None:
    data = json.loads((engine / MANIFEST_FILE).read_text())
    data.update(changes)
    (engine / MANIFEST_FILE).write_text(json.dumps(data))


def test_round_trip(tiny_engine):
    m = EngineManifest.read(tiny_engine)
    assert m.schema_version == SCHEMA_VERSION and m.model == "tiny" and not m.runs_on_gpu
    m.validated_on.append({"runtime": "reference", "ok": True})
    m.write(tiny_engine)
    assert EngineManifest.read(tiny_engine) == m
    assert [p.name for p in tiny_engine.iterdir() if p.name.startswith(".")] == []     # no temporary left


@pytest.mark.parametrize("changes, message", [
    (dict(schema_version=999), "schema_version 999 is not one gptoss-trt"),
    (dict(tp="2"), "field 'tp' must be integer"),
    (dict(tp=True), "field 'tp' must be integer"),
    (dict(max_seq_len=0), "field 'max_seq_len' must be at least 1"),
    (dict(sm="90"), "field 'sm' must be integer or null"),
    (dict(surprise=1), "unknown field(s) surprise"),
    (dict(validated_on=[1]), "array of objects"),
])
def test_bad_manifests_are_refused_by_name(tiny_engine, changes, message):
    _edit(tiny_engine, **changes)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EngineManifest.read(tiny_engine)


def test_missing_and_not_json(tmp_path):
    with pytest.raises(ManifestError, match="engine.json: missing"):
        EngineManifest.read(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[" * 100000)
    with pytest.raises(ManifestError, match="not readable JSON"):
        EngineManifest.read(tmp_path)


def _run(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=timeout)


def test_version_999_is_refused_by_every_cli_with_the_same_message(tiny_engine, tmp_path):
    _edit(tiny_engine, schema_version=999)
    expected = f"{tiny_engine / 'engine.json'}: schema_version 999 is not one gptoss-trt"
    runs = {
        "run-engine": _run("run-engine", tiny_engine, "--input-ids", "1,2,3"),
        "serve-engine": _run("serve-engine", tiny_engine, "--grpc-port", "18761", "--http-port", "18762",
                             "--metrics-port", "18763", "--ready-timeout", "5"),
        "engine-regression": _run("engine-regression", tiny_engine, "--report", tmp_path / "r"),
        "build-engine --validate": _run("build-engine", "--validate", tiny_engine),
        "write-model-repo": _run("write-model-repo", tiny_engine, "--output", tmp_path / "repo"),
    }
    for name, r in runs.items():
        assert r.returncode == 2, f"{name}: exit {r.returncode}\n{r.stderr}"
        assert expected in r.stderr, f"{name}: {r.stderr}"
    assert not (tmp_path / "repo").exists()
