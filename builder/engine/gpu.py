"""Which NVIDIA GPUs this machine has (nvidia-smi), and whether a --gpu target contradicts them."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from builder.engine import BuildError
from spec.registry.gpus import GpuProfile


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


def check_target_matches(target: GpuProfile, present: list[PresentGpu]) -> None:
    """A machine with GPUs builds for its own SM (engines built for one GPU model are refused by another);
    a machine without GPUs cross-builds for any target."""
    if target.sm is None or not present or any(g.sm == target.sm for g in present):
        return
    seen = ", ".join(sorted({f"{g.name} (SM {g.sm})" for g in present}))
    raise BuildError(f"--gpu {target.name} targets SM {target.sm}, but this machine has {seen}; pass the --gpu "
                     f"that matches it, or --cross-build to build for another GPU anyway (it cannot be validated here)")
