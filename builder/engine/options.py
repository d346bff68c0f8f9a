"""TensorRT-LLM LLM-API options for one engine, chosen by lookup from the plan and the GPU's profiles.

The result is what `trtllm-serve --extra_llm_api_options llm_api_options.yaml` and Triton's llmapi model
(`LLM(**model.yaml)`) take. Every key is a TorchLlmArgs field at the pinned upstream commit
(builder/data/trtllm_llm_args_fields.json); tests check them against that list.
"""

from __future__ import annotations

import json
from importlib import resources

from builder.fit import FitPlan
from spec.capabilities import moe_backend
from spec.network import Network
from spec.target import Target

# Upstream's own recipes size max_num_tokens at 20000 (database) or 16384 (curated); we take the
# curated figure, which is also a CUDA-graph-friendly power of two.
MAX_NUM_TOKENS = 16384
# CUDA graphs are captured for these batch sizes up to max_batch_size (padding fills the gaps).
CUDA_GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def llm_api_options(plan: FitPlan, target: Target, network: Network) -> dict:
    """The options for `network` on `target` as `plan` sized it. The context cannot exceed the network's
    positions, and the MoE backend is chosen for the quant format the network's experts actually hold."""
    serving = target.serving
    if plan.max_seq_len > network.max_position_embeddings:
        raise ValueError(f"max_seq_len {plan.max_seq_len} exceeds the network's {network.max_position_embeddings} "
                         f"positions")
    attention_dp = plan.tp > 1 and plan.max_batch_size >= serving.attention_dp_min_batch
    options = {
        "tensor_parallel_size": plan.tp,
        "moe_expert_parallel_size": plan.ep,
        "enable_attention_dp": attention_dp,
        "max_batch_size": plan.max_batch_size,
        "max_num_tokens": min(MAX_NUM_TOKENS, plan.max_batch_size * plan.max_seq_len),
        "max_seq_len": plan.max_seq_len,
        "kv_cache_config": {"dtype": target.trtllm_kv_cache_dtype,
                            "free_gpu_memory_fraction": serving.free_gpu_memory_fraction,
                            "enable_block_reuse": True},
        "cuda_graph_config": {"enable_padding": True,
                              "batch_sizes": [b for b in CUDA_GRAPH_BATCHES if b < plan.max_batch_size]
                              + [plan.max_batch_size]},
        "moe_config": {"backend": moe_backend(target.sm, network.experts_quant or plan.quant)},
        "stream_interval": serving.stream_interval,
    }
    if serving.env_overrides:
        options["env_overrides"] = dict(serving.env_overrides)
    if attention_dp:
        options["attention_dp_config"] = {"enable_balance": True, "batching_wait_iters": 0, "timeout_iters": 60}
    return options


def upstream_fields() -> dict:
    """The pinned TorchLlmArgs field list, with its source."""
    text = resources.files("builder").joinpath("data/trtllm_llm_args_fields.json").read_text()
    return json.loads(text)


def unknown_option_keys(options: dict) -> list[str]:
    """Keys (dotted for nested configs) that the pinned TorchLlmArgs would reject (extra='forbid')."""
    fields = upstream_fields()
    nested = {"kv_cache_config": "KvCacheConfig", "cuda_graph_config": "CudaGraphConfig",
              "moe_config": "MoeConfig", "attention_dp_config": "AttentionDpConfig"}
    bad = [k for k in options if k not in fields["TorchLlmArgs"]]
    for key, cls in nested.items():
        bad += [f"{key}.{k}" for k in options.get(key, {}) if k not in fields[cls]]
    return bad
