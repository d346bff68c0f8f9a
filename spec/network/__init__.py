"""The network definition of the gpt-oss family: the one declared structure every target derives from.

A `Network` says, per layer: the attention kind (sliding window of N tokens, or full), learned sink logits, the
StreamingLLM sink-token count, the RoPE/YaRN parameters, the MLP (MoE with top-k and a biased router, or dense),
the clamped-SwiGLU constants, the norms, which canonical tensor (spec.canonical) each parameter is, the quant
format of every linear and the kernels every op needs from a target. It is written as `network.json`.

Who derives what from it: the reference runtime and the ONNX/TensorRT graphs execute it; the planner reads the
kernels it needs from `kernels`; the checkpoint config (config.json, which TensorRT-LLM reads) must agree with
it field for field (`check_config_matches`); the LLM-API options take their context limit and MoE backend
from it.

Two keys every target shares, derived here once: a layer's `attention.rope` (a frozen, hashable Rope) keys its
cos/sin tables, and `attention.cache_kind` (CacheKind: full, or window + sink tokens) keys its KV-cache slots
and mask; layers with equal keys share them.

    net = network_from_config(config, quant="mxfp4")      # derive.py: ModelConfig -> Network
    net.save(path); net = load_network(path)             # validate.py: strict parse + validation
    check_config_matches(net, config)                     # views.py: config.json must say the same

Modules: schema (the dataclasses and kernel names), validate (checks and loaders), derive (from a config or an
opened checkpoint), views (what a checkpoint config must say for a network).
"""

from spec.network.derive import network_from_checkpoint, network_from_config, resolve_quant  # noqa: F401
from spec.network.schema import (ACTIVATIONS, ATTENTION_KINDS, DTYPES, KERNEL_MOE_BF16, KERNEL_SINK_ATTENTION,  # noqa: F401
                                 KERNEL_SINK_TOKENS, KERNEL_SLIDING_WINDOW, KERNEL_NAMES, FULL_CACHE, NETWORK_FILE,
                                 QUANT_GROUPS, SCHEMA_VERSION, Attention, CacheKind, DenseMLP, Embedding, ExpertLinear,
                                 Layer, Linear, MoE, Network, NetworkError, Norm, Rope, formats_allowed, gemm_kernels)
from spec.network.validate import load_network, network_from_dict, network_from_json, validate  # noqa: F401
from spec.network.views import check_config_matches, config_mismatches, config_view_of_network  # noqa: F401
