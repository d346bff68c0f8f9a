"""What deployment needs from an engine directory, read from its manifest (engine.json) in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spec.registry.gpus import GpuProfile

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
    """What deploy/ needs of an engine: its manifest (spec.manifest.EngineManifest) and the plan's memory numbers."""
    from spec.engine_values import ENGINE_ERRORS, read_engine
    from spec.target import target_of_manifest
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise DeployError(f"{engine_dir}: no such engine directory (build one with `build-engine --output DIR`)")
    try:
        m = read_engine(engine_dir).manifest
        gpu = target_of_manifest(m).gpu
    except ENGINE_ERRORS as e:
        raise DeployError(f"{e}; {engine_dir} is not a usable engine directory (build one with `build-engine "
                          f"--model M --gpu G --output {engine_dir}`)") from None
    except KeyError as e:
        raise DeployError(f"{engine_dir / MANIFEST}: {e.args[0]}") from None
    plan = m.plan
    try:
        return EngineInfo(
            engine_dir=engine_dir.resolve(), model=m.model, gpu=gpu, quant=m.quant, tp=m.tp, pp=1, ep=m.ep,
            max_seq_len=m.max_seq_len, max_batch_size=m.max_batch_size,
            weight_bytes_per_gpu=float(plan["weight_bytes_per_gpu"]),
            kv_bytes_per_sequence=float(plan["kv_bytes_per_sequence"]),
            kv_budget_bytes_per_gpu=float(plan["kv_budget_bytes_per_gpu"]),
            runtime_reserve_bytes=float(plan["runtime_reserve_bytes"]),
            memory_bytes_per_gpu=float(plan.get("memory_bytes_per_gpu", gpu.memory_bytes)),
            size_bytes=_dir_bytes(engine_dir))
    except KeyError as e:
        raise DeployError(f"{engine_dir / MANIFEST}: the plan has no {e}; rebuild the engine with `build-engine`") from None
    except (TypeError, ValueError) as e:
        raise DeployError(f"{engine_dir / MANIFEST}: malformed plan field ({e}); rebuild the engine") from None


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and not p.is_symlink())
