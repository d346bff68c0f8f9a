"""Per-architecture TensorRT-LLM serving defaults, declared as data, from upstream's gpt-oss recipes.

Source: builder/data/trtllm_gpt_oss_recipes.yaml (NVIDIA/TensorRT-LLM examples/configs/database/openai/
gpt-oss-120b/{B200,H200}/*.yaml and examples/configs/curated/gpt-oss-120b-*.yaml, commits listed there).
Looked up by GpuProfile.arch; the MoE backend is looked up by (SM, quant) in spec.capabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServingProfile:
    kv_cache_dtype: str              # "bf16" (the model dtype; TensorRT-LLM's "auto") or "fp8"
    free_gpu_memory_fraction: float  # kv_cache_config.free_gpu_memory_fraction
    stream_interval: int
    env_overrides: dict[str, str] = field(default_factory=dict)
    # Batch sizes from which attention data parallelism pays off (upstream turns it on only for its
    # max-throughput recipes, tp > 1 at concurrency >= 256).
    attention_dp_min_batch: int = 256
    source: str = ""


SERVING_BY_ARCH: dict[str, ServingProfile] = {
    "blackwell": ServingProfile("fp8", 0.85, 20, {"TRTLLM_ENABLE_PDL": "1", "NCCL_GRAPH_REGISTER": "0"},
                                source="db_B200_* recipes: kv fp8, fraction 0.85, stream_interval 20, PDL on"),
    "hopper": ServingProfile("bf16", 0.85, 20, {"TRTLLM_ENABLE_PDL": "1"},
                             source="db_H200_* recipes: kv auto, fraction 0.85, stream_interval 20"),
    # No upstream gpt-oss recipe exists for these; the same shape with a bf16 KV cache.
    "ada": ServingProfile("bf16", 0.85, 20, source="no upstream recipe; Hopper shape, bf16 KV"),
    "ampere": ServingProfile("bf16", 0.85, 20, source="no upstream recipe; Hopper shape, bf16 KV"),
    "cpu": ServingProfile("bf16", 0.9, 1, source="the reference runtime"),
}
