"""Which NVIDIA GPUs this machine has (nvidia-smi): what build, validation and serving check an engine's target
against."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class PresentGpu:
    name: str
    sm: int
    memory_mib: int


def detect_gpus() -> list[PresentGpu]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, cap, mem = (x.strip() for x in line.split(","))
        major, minor = cap.split(".")
        gpus.append(PresentGpu(name, int(major) * 10 + int(minor), int(float(mem))))
    return gpus


def trtllm_importable() -> bool:
    """TensorRT-LLM importable and a CUDA device present (checked without importing tensorrt_llm's heavy init)."""
    import importlib.util
    if importlib.util.find_spec("tensorrt_llm") is None:
        return False
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False
