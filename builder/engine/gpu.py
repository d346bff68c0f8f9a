"""Whether a --gpu target contradicts the GPUs this machine has."""

from __future__ import annotations

from builder.engine import BuildError
from runtime.devices import PresentGpu, detect_gpus  # noqa: F401  (re-exported for the build)
from spec.registry.gpus import GpuProfile


def check_target_matches(target: GpuProfile, present: list[PresentGpu]) -> None:
    """A machine with GPUs builds for its own SM (engines built for one GPU model are refused by another);
    a machine without GPUs cross-builds for any target."""
    if target.sm is None or not present or any(g.sm == target.sm for g in present):
        return
    seen = ", ".join(sorted({f"{g.name} (SM {g.sm})" for g in present}))
    raise BuildError(f"--gpu {target.name} targets SM {target.sm}, but this machine has {seen}; pass the --gpu "
                     f"that matches it, or --cross-build to build for another GPU anyway (it cannot be validated here)")
