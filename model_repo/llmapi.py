"""Upstream's `llmapi` Triton model for GPU engines: the `model.yaml` that NVIDIA's
triton_backend/all_models/llmapi/tensorrt_llm model reads (everything but `triton_config` goes through
tensorrt_llm's update_llm_args_with_extra_dict into `LLM(**kwargs)`; `triton_config` holds `decoupled`,
`max_batch_size` and optionally `cancellation_check_period_ms`), written from the engine's LLM-API options.

    doc = llmapi_model_yaml(engine_dir, max_batch_size=16, max_seq_len=4096)

write_model_repo writes it for GPU engines as tensorrt_llm/llmapi-model.yaml, to be put in place of the
`tensorrt_llm/1/model.yaml` of upstream's model in NVIDIA's Triton TensorRT-LLM container. It is not a model of
our repository (a folder without our config.pbtxt would fail to load). Why our own `tensorrt_llm` model stays
beside it: upstream's speaks text (text_input, sampling_param_* -> text_output, finish_reason, cumulative_logprob)
while our ensemble, BLS model, OpenAI endpoint and engine-regression speak TensorRT-LLM's token tensors
(input_ids, request_output_len, end_id, stop_words_list, return_log_probs, return_context_logits -> output_ids,
output_log_probs per token, context_logits), Harmony rendering and per-request stop ids.
"""

from __future__ import annotations

from pathlib import Path

from model_repo.trtllm import checkpoint_dir, check_network_matches_checkpoint, read_options

MODEL_YAML = "llmapi-model.yaml"
# Upstream's model: Triton-level batching off (max_batch_size 0; the LLM batches in flight), streaming needs
# decoupled; cancellation polled as often as our own model's writer does.
TRITON_CONFIG = {"max_batch_size": 0, "decoupled": True, "cancellation_check_period_ms": 100}


def llmapi_model_yaml(engine_dir: str | Path, *, max_batch_size: int, max_seq_len: int) -> dict:
    """The engine's checkpoint and LLM-API options (llm_api_options.yaml) as upstream's model.yaml mapping;
    the batch and context limits are defaults the options file overrides, as in model_repo.trtllm.llm_kwargs."""
    engine_dir = Path(engine_dir)
    check_network_matches_checkpoint(engine_dir)
    options = {"max_batch_size": int(max_batch_size), "max_seq_len": int(max_seq_len),
               **read_options(engine_dir)}
    if "triton_config" in options:
        raise ValueError(f"{engine_dir}/llm_api_options.yaml: 'triton_config' is model.yaml's Triton section, "
                         f"not an LLM-API option")
    return {"model": str(checkpoint_dir(engine_dir).resolve()), "backend": "pytorch", **options,
            "triton_config": dict(TRITON_CONFIG)}


def dump(doc: dict) -> str:
    import yaml
    head = ("# upstream's triton_backend/all_models/llmapi/tensorrt_llm/1/model.yaml for this engine "
            "(model_repo/llmapi.py)\n")
    return head + yaml.safe_dump(doc, sort_keys=False)
