"""The quant-format registry: what each format stores, which modules it covers, which kernels it needs.

Bits per weight include the block scales. Which SMs run a format is not typed here: it follows from the
kernels the format needs and the per-SM capability table in spec/capabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

# Module groups a format may cover. Routers, embeddings and lm_head stay bf16 in every format:
# routers are tiny and precision-critical, embeddings are a lookup, lm_head is excluded by ModelOpt too.
EXPERTS = "experts"          # the MLP weights: MoE experts, or the dense MLP of a dense model
ALL_LINEARS = "all_linears"   # attention q/k/v/o, experts or dense MLP; not router, embeddings, lm_head
NOTHING = "nothing"


@dataclass(frozen=True)
class QuantFormat:
    name: str
    description: str
    value_bits: int            # bits of one stored weight element
    block_size: int            # elements sharing one block scale (0: per-tensor or none)
    block_scale_bits: int      # bits of one block scale
    applies_to: str            # EXPERTS | ALL_LINEARS | NOTHING
    activations: str           # dtype the GEMM sees on its activation side
    compute: str               # tensor-core rate used for prefill FLOPs: "bf16" | "fp8" | "fp4"
    kernels: tuple[str, ...]   # keys of spec.capabilities.KERNELS this format needs
    trtllm_quant_algo: str | None  # TensorRT-LLM QuantAlgo name, None for unquantized
    checkpoint: str            # the checkpoint layout build-engine writes for it
    # Whether TensorRT-LLM's gpt-oss loader (PyTorch backend) reads checkpoints in this format.
    trtllm_loads_gpt_oss: bool = True

    @property
    def bits_per_weight(self) -> float:
        scale = self.block_scale_bits / self.block_size if self.block_size else 0.0
        return self.value_bits + scale


QUANT_FORMATS: dict[str, QuantFormat] = {q.name: q for q in [
    QuantFormat("bf16", "unquantized bf16 weights and activations",
                16, 0, 0, NOTHING, "bf16", "bf16", (), None, "hf"),
    QuantFormat("fp8", "FP8 e4m3 weights with per-tensor scales, FP8 activations",
                8, 0, 0, ALL_LINEARS, "fp8", "fp8", ("gemm_fp8",), "FP8", "hf-fp8",
                # TensorRT-LLM's gpt-oss weight loader has no FP8 expert path (FP8 is a KV dtype there).
                trtllm_loads_gpt_oss=False),
    QuantFormat("mxfp4", "MXFP4 expert weights (e2m1, e8m0 scale per 32), bf16 activations (W4A16)",
                4, 32, 8, EXPERTS, "bf16", "bf16", ("moe_mxfp4_w4a16",), "W4A16_MXFP4", "hf-mxfp4"),
    # Experts only: TensorRT-LLM's gpt-oss loader forces attention, router, embeddings and lm_head to stay
    # bf16 in NVFP4 checkpoints (modeling_gpt_oss.py overrides exclude_modules).
    QuantFormat("nvfp4", "NVFP4 W4A4 experts: e2m1 weights and activations, e4m3 scale per 16, fp32 global scale",
                4, 16, 8, EXPERTS, "nvfp4", "fp4", ("gemm_nvfp4",), "NVFP4", "hf-nvfp4"),
    # What `convert-checkpoint --to hf-nvfp4` writes without calibration data (ModelOpt's W4A16_NVFP4):
    # the same experts-only checkpoint layout with no activation scales. The reference runtime runs it;
    # TensorRT-LLM's gpt-oss loader reads NVFP4 W4A4 only, so no GPU kernel is listed for it.
    QuantFormat("w4a16-nvfp4", "NVFP4 expert weights with bf16 activations (weight-only, ModelOpt W4A16_NVFP4)",
                4, 16, 8, EXPERTS, "bf16", "bf16", ("moe_nvfp4_w4a16",), "W4A16_NVFP4", "hf-nvfp4",
                trtllm_loads_gpt_oss=False),
]}

# `--quant auto`: one lookup by architecture, never a chain of GPU names.
AUTO_QUANT_BY_ARCH = {
    "blackwell": "nvfp4",   # FP4 tensor cores
    "hopper": "mxfp4",      # no FP4 tensor cores: MXFP4 weights, bf16 math (TensorRT-LLM's Hopper default)
    "ada": "fp8",           # FP8 tensor cores, no MXFP4 MoE kernel upstream
    "ampere": "bf16",       # neither FP8 nor FP4
    "cpu": "bf16",          # the reference runtime
}
# ... except that `auto` on these architectures keeps a source checkpoint already stored in one of these
# formats: the CPU executors run weight-only formats exactly, so a released MXFP4 20b stays ~13 GB rather
# than becoming 42 GB of bf16. Other architectures re-quantize to their own format (the kernels they run).
AUTO_KEEPS_SOURCE_BY_ARCH: dict[str, tuple[str, ...]] = {
    "cpu": ("mxfp4",),
}


def get_quant(name: str) -> QuantFormat:
    try:
        return QUANT_FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown quant {name!r}; valid quants: auto, {', '.join(QUANT_FORMATS)}") from None
