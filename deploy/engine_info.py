"""What deployment needs from an engine directory, read from its manifest (engine.json) in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spec.registry.gpus import GPUS, GpuProfile

MANIFEST = "engine.json"


class DeployError(ValueError):
    """Bad input to deploy-engine: the message names the file or flag and how to fix it."""


@dataclass(frozen=True)
class EngineInfo:
    engine_dir: Path
    model: str
    gpu: GpuProfile
    quant: str
    tp: int
    pp: int
    ep: int
    max_seq_len: int
    max_batch_size: int
    weight_bytes_per_gpu: float
    kv_bytes_per_sequence: float
    kv_budget_bytes_per_gpu: float
    runtime_reserve_bytes: float
    memory_bytes_per_gpu: float
    size_bytes: int              # the engine directory on disk (weights, tokenizer, triton/)

    @property
    def on_cpu(self) -> bool:
        return self.gpu.arch == "cpu"

    @property
    def world_size(self) -> int:
        return self.tp * self.pp


def read_manifest(engine_dir: Path) -> EngineInfo:
    """The one reader of engine.json for deploy/: its fields and the plan's memory numbers."""
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        raise DeployError(f"{engine_dir}: no such engine directory (build one with `build-engine --output DIR`)")
    if not path.is_file():
        raise DeployError(f"{path}: missing; {engine_dir} is not an engine directory "
                          f"(build one with `build-engine --model M --gpu G --output {engine_dir}`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DeployError(f"{path}: not readable JSON ({e}); rebuild the engine") from None
    plan = data.get("plan") or {}
    gpu = GPUS.get(str(data.get("gpu")))
    if gpu is None:
        raise DeployError(f"{path}: gpu {data.get('gpu')!r} is not in the GPU registry ({', '.join(GPUS)})")
    try:
        return EngineInfo(
            engine_dir=engine_dir.resolve(), model=str(data["model"]), gpu=gpu, quant=str(data["quant"]),
            tp=int(data.get("tp", 1)), pp=int(data.get("pp", 1)), ep=int(data.get("ep", 1)),
            max_seq_len=int(data["max_seq_len"]), max_batch_size=int(data["max_batch_size"]),
            weight_bytes_per_gpu=float(plan["weight_bytes_per_gpu"]),
            kv_bytes_per_sequence=float(plan["kv_bytes_per_sequence"]),
            kv_budget_bytes_per_gpu=float(plan["kv_budget_bytes_per_gpu"]),
            runtime_reserve_bytes=float(plan["runtime_reserve_bytes"]),
            memory_bytes_per_gpu=float(plan.get("memory_bytes_per_gpu", gpu.memory_bytes)),
            size_bytes=_dir_bytes(engine_dir))
    except KeyError as e:
        raise DeployError(f"{path}: field {e} missing (a manifest from an older build-engine?); rebuild the "
                          f"engine with `build-engine`") from None
    except (TypeError, ValueError) as e:
        raise DeployError(f"{path}: malformed field ({e}); rebuild the engine") from None


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and not p.is_symlink())
