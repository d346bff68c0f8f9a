"""engine.json, the contract between build, serving, deployment and regression: one typed `EngineManifest`,
read and written only here.

    m = EngineManifest.read(engine_dir)      # ManifestError (file, field, version, fix) on anything off
    m.write(engine_dir)                      # atomic: a temporary file renamed over engine.json

A manifest says what an engine was built from (`inputs`: source checkpoint and a sha256 per file), for what
(`target`: the resolved GPU, SM, serving profile and kernels; `quant`, `tp`/`ep`, sizes and the `plan`), with
what (`tools`) and where it actually ran (`validated_on`: one record per runtime that ran, or could not run,
the engine). `schema_version` changes whenever a field changes meaning; a reader refuses versions it does
not know rather than guess.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "engine.json"
# 3: `network_plugins` became `network_kernels` (and network.json went to its schema 2).
SCHEMA_VERSION = 3
READABLE_VERSIONS = (3,)
# engine.json is small; a larger one is not ours (and would cost memory to parse).
MAX_MANIFEST_BYTES = 16 * 2**20


class ManifestError(ValueError):
    """engine.json is missing, unreadable, of an unknown schema_version, or has a field of the wrong type."""


@dataclass
class EngineManifest:
    model: str
    gpu: str
    quant: str
    tp: int
    ep: int
    max_seq_len: int
    max_batch_size: int
    schema_version: int = SCHEMA_VERSION
    sm: int | None = None
    trtllm_quant_algo: str | None = None
    # The resolved build target (spec.target.Target.to_dict()): GPU, arch, SM, serving profile, KV dtype, kernels.
    target: dict = field(default_factory=dict)
    cache_key: str | None = None
    # {"checkpoint": source folder, "sha256": {file: digest}, "calib_file": path or None}
    inputs: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    network_kernels: list = field(default_factory=list)
    build_seconds: float | None = None
    validated_on: list = field(default_factory=list)
    # Serving hints: a tokenizer name ("o200k_harmony") when the engine ships none; stop token ids.
    tokenizer: str | None = None
    stop_token_ids: list = field(default_factory=list)
    # TensorRT graph and plan: {"onnx", "plan", "builder", "builder_version", "sm", "ran_on_gpu"}.
    tensorrt: dict | None = None
    # sha256 of every file under triton/ as write_model_repo wrote it (model_repo.integrity): serve-engine
    # serves that folder only if it still matches. None: an engine written before hashes were recorded.
    triton_sha256: dict | None = None

    # -- reading ---------------------------------------------------------------------------------------
    @classmethod
    def read(cls, engine_dir: str | Path) -> "EngineManifest":
        path = Path(engine_dir) / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(f"{path}: missing; pass an engine directory written by build-engine")
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{path}: {path.stat().st_size} bytes, larger than any engine.json "
                                    f"({MAX_MANIFEST_BYTES} at most); is this an engine directory?")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            if isinstance(e, ManifestError):
                raise
            raise ManifestError(f"{path}: not readable JSON ({type(e).__name__}: {e}); rebuild the engine "
                                f"with build-engine") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_FILE) -> "EngineManifest":
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            from spec import __version__
            raise ManifestError(
                f"{where}: schema_version {version!r} is not one gptoss-trt {__version__} reads "
                f"(it reads {', '.join(map(str, READABLE_VERSIONS))}); rebuild the engine with this version's "
                f"build-engine, or use the gptoss-trt that built it")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)} for schema_version {version}; "
                                f"the file was edited by hand or written by another tool")
        missing = [n for n, f in known.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and n not in data]
        if missing:
            raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}; rebuild the engine")
        for name, value in data.items():
            _check_type(where, name, value, _TYPES[name])
        return cls(**data)

    # -- writing ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, engine_dir: str | Path) -> Path:
        path = Path(engine_dir) / MANIFEST_FILE
        tmp = path.with_name(f".{MANIFEST_FILE}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def add_validation(self, engine_dir: str | Path, record: dict) -> None:
        self.validated_on.append(record)
        self.write(engine_dir)

    # -- what readers ask ------------------------------------------------------------------------------
    @property
    def runs_on_gpu(self) -> bool:
        return self.sm is not None

    @property
    def source_sha256(self) -> dict:
        return dict(self.inputs.get("sha256") or {})


def is_engine_dir(path: str | Path) -> bool:
    """A directory holding a manifest (whatever its version): what an engine install may replace."""
    return (Path(path) / MANIFEST_FILE).is_file()


# JSON types per field (bool is not an int here; None only where the field says so).
_TYPES: dict[str, tuple] = {
    "model": (str,), "gpu": (str,), "quant": (str,), "tp": (int,), "ep": (int,), "max_seq_len": (int,),
    "max_batch_size": (int,), "schema_version": (int,), "sm": (int, type(None)),
    "trtllm_quant_algo": (str, type(None)), "target": (dict,), "cache_key": (str, type(None)),
    "inputs": (dict,), "tools": (dict,), "plan": (dict,), "network_kernels": (list,),
    "build_seconds": (int, float, type(None)), "validated_on": (list,), "tokenizer": (str, type(None)),
    "stop_token_ids": (list,), "tensorrt": (dict, type(None)), "triton_sha256": (dict, type(None)),
}
_POSITIVE = ("tp", "ep", "max_seq_len", "max_batch_size")


def _check_type(where: str, name: str, value, types: tuple) -> None:
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else {dict: "object", list: "array", str: "string",
                                                             int: "integer", float: "number"}[t] for t in types)
        raise ManifestError(f"{where}: field {name!r} must be {names}, got {json.dumps(value)[:80]}")
    if name in _POSITIVE and value < 1:
        raise ManifestError(f"{where}: field {name!r} must be at least 1, got {value}")
    if name == "validated_on" and not all(isinstance(r, dict) for r in value):
        raise ManifestError(f"{where}: field 'validated_on' must be an array of objects")
    if name == "triton_sha256" and value is not None and not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in value.items()):
        raise ManifestError(f"{where}: field 'triton_sha256' must map file names to sha256 hex digests")
    if name == "stop_token_ids" and not all(type(t) is int and t >= 0 for t in value):
        raise ManifestError(f"{where}: field 'stop_token_ids' must be an array of token ids, got "
                            f"{json.dumps(value)[:80]}")
