"""Which TensorRT builds a plan for which GPU: a lookup by SM, never a chain of GPU names.

TensorRT-RTX (PyPI tensorrt-rtx-cu13) compiles plans ahead of time without a GPU, for the compute
capabilities its ComputeCapability enum lists (checked at run time too: a newer wheel may add more).
Data-centre Hopper/Blackwell SMs are not among them: their plans are built by standard TensorRT on a GPU
of that SM (`build-engine --validate DIR`)."""

from __future__ import annotations

RTX = "tensorrt-rtx"
TENSORRT = "tensorrt"

# SM -> TensorRT-RTX ComputeCapability member (tensorrt_rtx 1.7: SM75, SM80, SM86, SM89, SM120, SM121).
RTX_COMPUTE_CAPABILITY = {75: "SM75", 80: "SM80", 86: "SM86", 89: "SM89", 120: "SM120", 121: "SM121"}
# SMs whose plan standard TensorRT builds on the GPU box itself.
ON_GPU_SMS = (90, 100, 103)


def builder_for(sm: int | None) -> str | None:
    """'tensorrt-rtx' (built here, ahead of time), 'tensorrt' (built on the GPU box) or None (no GPU target)."""
    if sm is None:
        return None
    if sm in RTX_COMPUTE_CAPABILITY:
        return RTX
    return TENSORRT if sm in ON_GPU_SMS else None
