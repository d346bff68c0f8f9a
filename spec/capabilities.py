"""Which kernels the serving stack (TensorRT-LLM, PyTorch backend) offers on which SM.

Each entry is "supported", "unverified" (upstream has code paths but no gpt-oss claim or known breakage
on some versions: plan with it, validate before trusting it) or absent. Facts from upstream, see SOURCE.
The CPU target is our reference runtime, which implements every op by emulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCE = ("NVIDIA/TensorRT-LLM: tensorrt_llm/_torch/models/modeling_gpt_oss.py, fused MoE backends "
          "(tensorrt_llm/_torch/modules/fused_moe/), the gpt-oss deployment guide, and its issue tracker, "
          "as summarised in shared/FIELD-NOTES.md §6 (2026)")

KERNELS = {
    "attention_sinks": "attention with learned per-head sink logits",
    "sliding_window": "sliding-window attention with a per-layer window",
    "gemm_nvfp4": "NVFP4 W4A4 GEMM on FP4 tensor cores",
    "moe_mxfp4_w4a16": "MoE with MXFP4 weights and bf16 activations",
    "moe_nvfp4_w4a16": "MoE with NVFP4 weights and bf16 activations (weight-only NVFP4)",
    "gemm_fp8": "FP8 e4m3 GEMM",
    "moe_bf16": "MoE with bf16 weights",
    # StreamingLLM sink tokens (the leak's "keep the first tokens" policy for sliding layers). TensorRT-LLM's
    # PyTorch backend ignores kv_cache_config.sink_token_length (deprecated there), so no SM lists it:
    # only the reference runtime runs a network with sink_tokens > 0.
    "streaming_sink_tokens": "StreamingLLM sink tokens kept visible to sliding-window layers",
}

SUPPORTED = "supported"
UNVERIFIED = "unverified"


@dataclass(frozen=True)
class SmCapabilities:
    kernels: dict[str, str]
    moe_backends: tuple[str, ...]   # TensorRT-LLM moe_config.backend values, preferred first
    notes: tuple[str, ...] = field(default_factory=tuple)


_BASE = {"attention_sinks": SUPPORTED, "sliding_window": SUPPORTED, "moe_bf16": SUPPORTED}

SM_CAPABILITIES: dict[int | None, SmCapabilities] = {
    80: SmCapabilities(
        {**_BASE, "attention_sinks": UNVERIFIED},
        ("CUTLASS",),
        ("gpt-oss is not in TensorRT-LLM's support matrix for Ampere; no FP8/FP4 tensor cores",)),
    89: SmCapabilities(
        {**_BASE, "attention_sinks": UNVERIFIED, "gemm_fp8": SUPPORTED},
        ("CUTLASS",),
        ("gpt-oss is not in TensorRT-LLM's support matrix for Ada",)),
    90: SmCapabilities(
        {**_BASE, "gemm_fp8": SUPPORTED, "moe_mxfp4_w4a16": SUPPORTED},
        ("CUTLASS", "TRITON"),
        ("MXFP4 W4A16 MoE runs on the TRITON backend (deprecated in TensorRT-LLM 1.3)",)),
    100: SmCapabilities(
        {**_BASE, "gemm_fp8": SUPPORTED, "gemm_nvfp4": SUPPORTED, "moe_mxfp4_w4a16": SUPPORTED},
        ("TRTLLM", "CUTLASS"),
        ("TRTLLM MoE backend: low latency; CUTLASS: throughput",)),
    103: SmCapabilities(
        {**_BASE, "gemm_fp8": SUPPORTED, "gemm_nvfp4": SUPPORTED, "moe_mxfp4_w4a16": SUPPORTED},
        ("TRTLLM", "CUTLASS"),
        ("TRTLLM MoE backend: low latency; CUTLASS: throughput",)),
    120: SmCapabilities(
        {**_BASE, "attention_sinks": UNVERIFIED, "gemm_fp8": SUPPORTED, "gemm_nvfp4": UNVERIFIED,
         "moe_mxfp4_w4a16": UNVERIFIED},
        ("CUTLASS",),
        ("attention sinks were missing on SM120 in early builds; FLASHINFER attention fails there",
         "NVFP4 GEMM gave wrong results on SM120 in some versions: validate the engine on the box",
         "the TRTLLM MoE backend is SM100/103 only")),
    None: SmCapabilities(  # the CPU reference runtime emulates every kernel
        {k: SUPPORTED for k in KERNELS}, ("reference",), ("reference runtime: emulated numerics",)),
}


# Quant formats whose MoE must run on a particular backend where one is listed for the SM (upstream:
# Hopper runs MXFP4 W4A16 experts on OpenAI's triton kernels).
PREFERRED_MOE_BACKEND: dict[tuple[int, str], str] = {(90, "mxfp4"): "TRITON"}


def moe_backend(sm: int | None, quant: str) -> str:
    """TensorRT-LLM moe_config.backend for this SM and quant format: a lookup, then the SM's first choice."""
    return PREFERRED_MOE_BACKEND.get((sm, quant)) or capabilities(sm).moe_backends[0]


def capabilities(sm: int | None) -> SmCapabilities:
    try:
        return SM_CAPABILITIES[sm]
    except KeyError:
        raise KeyError(f"no capability entry for SM {sm}; known: {sorted(k for k in SM_CAPABILITIES if k)}") from None


def kernel_status(sm: int | None, kernel: str) -> str | None:
    """"supported", "unverified", or None when the stack has no such kernel on this SM."""
    return capabilities(sm).kernels.get(kernel)


# -- the compute dtype of an engine's TensorRT graph, per SM ------------------------------------------------
# bf16 where the SM has bf16 tensor cores (Ampere SM80 and later), fp16 where it lacks them (Turing SM75:
# fp16 tensor cores only). GPU graphs keep fp32 islands where the numerics need them whatever this is
# (plugins/onnx: the sink softmax and the scores, RMSNorm's statistic, the router's logits and routing
# weights). The CPU target (None) gets the fp32 graph its executors check against the reference runtime.
# Source: NVIDIA CUDA C++ Programming Guide, "Arithmetic Instructions" and the per-architecture tuning guides
# (bf16 tensor-core MMA from compute capability 8.0; Turing 7.5 has fp16 and int8/int4 MMA only).
GRAPH_DTYPE_BY_SM: dict[int | None, str] = {
    75: "float16",
    80: "bfloat16", 86: "bfloat16", 89: "bfloat16",
    90: "bfloat16",
    100: "bfloat16", 103: "bfloat16",
    120: "bfloat16", 121: "bfloat16",
    None: "float32",
}


# The matmuls inside those fp32 islands (attention scores and probs @ V, the router GEMM) run in fp32 unless
# the SM's TensorRT-RTX has no fp32 GEMM: there they run in the compute dtype (tensor cores accumulate in fp32)
# and the island starts at their output. TensorRT-RTX 1.7.1 for SM75: "Cannot compile operation 'scores' for
# Turing (SM75): FP32 GEMM is not supported" (its builder's log, building the tiny graph here).
ISLAND_GEMM_DTYPE_BY_SM: dict[int | None, str] = {75: "float16"}


def island_gemm_dtype(sm: int | None) -> str:
    """The dtype of the GEMMs inside the graph's fp32 islands on this SM: "float32" unless listed."""
    return ISLAND_GEMM_DTYPE_BY_SM.get(sm, "float32")


def graph_dtype(sm: int | None) -> str:
    """The compute dtype ("bfloat16", "float16" or "float32") an engine's TensorRT graph is exported in for
    this SM: a lookup in GRAPH_DTYPE_BY_SM."""
    try:
        return GRAPH_DTYPE_BY_SM[sm]
    except KeyError:
        raise KeyError(f"no graph dtype entry for SM {sm}; known: "
                       f"{sorted(k for k in GRAPH_DTYPE_BY_SM if k is not None)} (add it to "
                       f"spec.capabilities.GRAPH_DTYPE_BY_SM)") from None
