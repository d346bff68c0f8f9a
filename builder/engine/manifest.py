"""engine.json: what an engine was built from, for what, with what, and where it actually ran."""

from __future__ import annotations

import json
import os
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST = "engine.json"


def read(engine_dir: Path) -> dict:
    try:
        data = json.loads((Path(engine_dir) / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write(engine_dir: Path, data: dict) -> None:
    path = Path(engine_dir) / MANIFEST
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def add_validation(engine_dir: Path, record: dict) -> None:
    data = read(engine_dir)
    data.setdefault("validated_on", []).append(record)
    write(engine_dir, data)
