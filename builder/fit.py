"""The fit planner: will (model, gpu, quant, tp, ep, max_seq_len, max_batch_size) fit, and how fast can it go?

Everything is arithmetic on the registries: weight bytes per GPU from the parameter breakdown and the
quant format, KV bytes from the layer pattern (full layers grow with context, sliding layers hold at most
window + sink tokens), a runtime reserve, and roofline speed estimates (bytes over bandwidth for decode,
FLOPs over tensor-core throughput for prefill). Speeds are ceilings, not predictions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from spec.capabilities import KERNELS, UNVERIFIED, kernel_status
from spec.network import network_from_config
from spec.params import (KV_DTYPE_BYTES, active_params, component_bytes, components, kv_bytes_per_token_per_layer,
                         total_params)
from spec.registry.gpus import GpuProfile
from spec.registry.models import ModelConfig, get_model
from spec.registry.quant_formats import AUTO_QUANT_BY_ARCH, QUANT_FORMATS, QuantFormat
from spec.target import Target, auto_quant_note, quant_for, resolve_target

GB = 1e9
# CUDA context, cuBLAS/CUTLASS workspaces and NCCL buffers, per GPU (TensorRT-LLM measures ~1-2 GB).
RUNTIME_FIXED_BYTES = {"gpu": 2.0 * GB, "cpu": 1.0 * GB}
# TensorRT-LLM's kv_cache_config.free_gpu_memory_fraction default: share of the memory left after
# weights and activations that becomes KV cache.
KV_MEMORY_FRACTION = 0.9
# Tokens per forward pass the activation reserve is sized for (TensorRT-LLM's max_num_tokens default).
DEFAULT_MAX_NUM_TOKENS = 8192
# Prompt length the prefill estimate is quoted at.
PREFILL_PROMPT_TOKENS = 8192

RUNNABLE, LOW_MEMORY, INCOMPATIBLE = "runnable", "low-memory", "incompatible"


class FitError(ValueError):
    """A request that cannot be planned at all (unknown names, impossible combinations): CLI exit 2."""


@dataclass
class FitPlan:
    model: str
    gpu: str
    quant: str
    tp: int
    ep: int
    verdict: str
    params_total: int
    params_active: int
    weight_bytes_per_gpu: float
    kv_bytes_per_token: float
    max_concurrent_sequences: int
    decode_tokens_per_s_batch1: float
    reasons: list[str] = field(default_factory=list)
    # Beyond the contract fields: the numbers behind the verdict.
    max_seq_len: int = 0
    max_batch_size: int = 0
    kv_dtype: str = "bf16"
    memory_bytes_per_gpu: float = 0.0
    runtime_reserve_bytes: float = 0.0
    kv_budget_bytes_per_gpu: float = 0.0
    kv_bytes_per_sequence: float = 0.0
    sliding_kv_bytes_per_sequence: float = 0.0
    bytes_read_per_token_batch1: float = 0.0
    decode_tokens_per_s_batch_n: float = 0.0
    prefill_tokens_per_s: float = 0.0
    fits_max_seq_len: int | None = None
    fits_max_batch_size: int | None = None
    kernels: dict[str, str] = field(default_factory=dict)
    # How `--quant auto` chose `quant` where that depends on the source's format (spec.target.auto_quant_note).
    quant_note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_request(model: ModelConfig, gpu: GpuProfile, quant: QuantFormat, tp: int | None, ep: int | None):
    """Raise FitError for combinations no amount of memory fixes."""
    for kernel in quant.kernels:
        if kernel_status(gpu.sm, kernel) is None:
            raise FitError(f"quant {quant.name} needs {KERNELS[kernel]}, which {gpu.name} (SM {gpu.sm}) lacks; "
                            f"use --quant auto ({AUTO_QUANT_BY_ARCH[gpu.arch]} on {gpu.name})")
    if tp is not None:
        if tp < 1 or model.num_q_heads % tp:
            raise FitError(f"--tp {tp} must be a positive divisor of the {model.num_q_heads} attention heads")
        if tp > gpu.max_gpus_per_node:
            raise FitError(f"--tp {tp} exceeds the {gpu.max_gpus_per_node} {gpu.name} GPUs of one node")
    if ep is not None:
        if ep < 1:
            raise FitError(f"--ep {ep} must be at least 1")
        if not model.is_moe and ep > 1:
            raise FitError(f"--ep {ep}: model {model.name} has no experts to distribute")
        if model.is_moe and ep > model.num_experts:
            raise FitError(f"--ep {ep} is above the {model.num_experts} experts of {model.name}")
        if model.is_moe and model.num_experts % ep:
            raise FitError(f"--ep {ep} must divide the {model.num_experts} experts of {model.name}")
        if tp is not None and tp % ep:
            raise FitError(f"--ep {ep} must divide --tp {tp} (TensorRT-LLM: moe_tp_size x moe_ep_size = tp_size)")


def weight_bytes_per_gpu(model: ModelConfig, quant: QuantFormat, tp: int) -> float:
    """Attention, MLP/experts and the vocabulary matrices split over tp GPUs (experts by ep x moe_tp = tp);
    routers and norms are replicated. K/V projections cannot split finer than one kv head per GPU."""
    total = 0.0
    for name, comp in components(model).items():
        nbytes = component_bytes(comp, quant)
        if name in ("router", "norms"):
            total += nbytes
        elif name == "attention":
            kv_split = min(tp, model.num_kv_heads)
            kv_share = 2 * model.num_kv_heads / (2 * model.num_q_heads + 2 * model.num_kv_heads)
            total += nbytes * ((1 - kv_share) / tp + kv_share / kv_split)
        else:
            total += nbytes / tp
    return total


def kv_bytes_per_token_per_layer_per_gpu(model: ModelConfig, tp: int, kv_dtype: str) -> float:
    # K/V heads cannot split finer than one head per GPU.
    return kv_bytes_per_token_per_layer(max(1, model.num_kv_heads // tp), model.head_dim, kv_dtype)


def kv_bytes_per_sequence(model: ModelConfig, tp: int, kv_dtype: str, seq_len: int) -> tuple[float, float]:
    """(full-layer bytes, sliding-layer bytes) of one sequence of seq_len tokens on one GPU."""
    per_layer = kv_bytes_per_token_per_layer_per_gpu(model, tp, kv_dtype)
    sliding_tokens = min(seq_len, model.sliding_window + model.sink_tokens)
    return (model.num_full_layers * per_layer * seq_len, model.num_sliding_layers * per_layer * sliding_tokens)


def runtime_reserve_bytes(model: ModelConfig, gpu: GpuProfile, tp: int, max_batch_size: int) -> float:
    fixed = RUNTIME_FIXED_BYTES["cpu" if gpu.sm is None else "gpu"]
    width = (4 * model.hidden_size + (model.num_q_heads + 2 * model.num_kv_heads) * model.head_dim / tp
             + max(model.experts_per_token, 1) * 3 * model.intermediate_size / tp)
    activations = DEFAULT_MAX_NUM_TOKENS * width * 2
    logits = max_batch_size * model.vocab_size * 4 / tp
    return fixed + activations + logits


def _compute_tflops(gpu: GpuProfile, quant: QuantFormat) -> float:
    rate = {"bf16": gpu.bf16_tflops, "fp8": gpu.fp8_tflops, "fp4": gpu.fp4_tflops}[quant.compute]
    return rate or gpu.bf16_tflops


def decode_speed(model: ModelConfig, gpu: GpuProfile, quant: QuantFormat, tp: int, batch: int,
                 context: int, kv_dtype: str) -> tuple[float, float]:
    """(tokens/s, weight bytes read per step per GPU) for one decode step of `batch` sequences at `context`.
    A step reads the dense weights once, each distinct expert the batch touches once (tokens route
    independently: E * (1 - (1 - k/E)^batch) experts expected), and every sequence's KV cache; it can
    be no faster than its FLOPs at the tensor-core rate either."""
    weight_read = 0.0
    for name, comp in components(model).items():
        if name == "embedding":
            continue   # one row per token
        share = comp.active_fraction
        if name == "experts":
            share = 1 - (1 - comp.active_fraction) ** batch
        weight_read += component_bytes(comp, quant) * share / tp
    full, sliding = kv_bytes_per_sequence(model, tp, kv_dtype, context)
    step_bytes = weight_read + batch * (full + sliding)
    memory_time = step_bytes / (gpu.bandwidth_tb_s * 1e12)
    compute_time = 2 * active_params(model) * batch / (_compute_tflops(gpu, quant) * 1e12 * tp)
    return batch / max(memory_time, compute_time), weight_read


def prefill_speed(model: ModelConfig, gpu: GpuProfile, quant: QuantFormat, tp: int, prompt: int) -> float:
    """Tokens/s for a prompt of `prompt` tokens: matmul FLOPs (2 x active params) plus attention scores and
    values (4 x q width x keys seen, half the prompt on average, at most the window on sliding layers)."""
    q_width = model.num_q_heads * model.head_dim
    attn = 4 * q_width * (model.num_full_layers * prompt / 2
                          + model.num_sliding_layers * min(prompt / 2, model.sliding_window))
    flops_per_token = 2 * active_params(model) + attn
    return _compute_tflops(gpu, quant) * 1e12 * tp / flops_per_token


def plan(model_name: str | ModelConfig, gpu_name: str, quant: str = "auto", tp: int | None = None,
         ep: int | None = None, max_seq_len: int | None = None, max_batch_size: int = 1,
         kv_dtype: str | None = None, source_quant: str | None = None) -> FitPlan:
    """The plan by names (the CLI's `--plan`): resolves the target, then plan_for. A ModelConfig (read from a
    checkpoint) plans like a registry entry. `source_quant`: the source checkpoint's format where known, so
    `--quant auto` resolves as the build will (some architectures keep it: AUTO_KEEPS_SOURCE_BY_ARCH)."""
    try:
        model = model_name if isinstance(model_name, ModelConfig) else get_model(model_name)
        target = resolve_target(gpu_name, quant, kv_dtype, source_quant=source_quant)
    except KeyError as e:
        raise FitError(e.args[0]) from None
    p = plan_for(model, target, tp=tp, ep=ep, max_seq_len=max_seq_len, max_batch_size=max_batch_size)
    p.quant_note = auto_quant_note(target.gpu, quant, source_quant)
    return p


def plan_for(model: ModelConfig, target: Target, tp: int | None = None, ep: int | None = None,
             max_seq_len: int | None = None, max_batch_size: int = 1) -> FitPlan:
    gpu, qf, kv_dtype = target.gpu, target.quant, target.kv_cache_dtype
    if kv_dtype not in KV_DTYPE_BYTES:
        raise FitError(f"unknown kv dtype {kv_dtype!r}; valid: {', '.join(KV_DTYPE_BYTES)}")
    seq_len = max_seq_len or model.max_position_embeddings
    if not 1 <= seq_len <= model.max_position_embeddings:
        raise FitError(f"--max-seq-len {seq_len} must be between 1 and {model.name}'s context of "
                        f"{model.max_position_embeddings}")
    if max_batch_size < 1:
        raise FitError(f"--max-batch-size {max_batch_size} must be at least 1")
    check_request(model, gpu, qf, tp, ep)

    candidates = [tp] if tp is not None else [t for t in (1, 2, 4, 8, 16, 32, 64)
                                              if t <= gpu.max_gpus_per_node and model.num_q_heads % t == 0]
    plans = [_plan_one(model, gpu, qf, t, ep if ep is not None else 1, seq_len, max_batch_size, kv_dtype)
             for t in candidates]
    best = next((p for p in plans if p.verdict == RUNNABLE), None) \
        or next((p for p in plans if p.verdict == LOW_MEMORY), None) or plans[-1]
    if tp is None and best.tp > 1:
        best.reasons.append(f"tp={best.tp}: the smallest tensor parallelism among {candidates} giving "
                            f"the best verdict")
    if best.verdict == INCOMPATIBLE:
        best.reasons.extend(_alternatives(model, gpu, seq_len, max_batch_size, kv_dtype, tried_tp=tp))
    if ep is None and model.is_moe and best.tp > 1:
        best.reasons.append("ep=1: weight memory per GPU is the same for any ep (experts split over tp GPUs "
                            "either way); pass --ep to trade TP all-reduces for expert parallelism")
    return best


def kernels_needed(model: ModelConfig, qf: QuantFormat) -> tuple[str, ...]:
    """The kernels the model's network definition names (spec.network: per-op kernels), nothing re-derived."""
    return network_from_config(model, qf.name).kernels


# What TensorRT-LLM's gpt-oss model (PyTorch backend, tensorrt_llm/_torch/models/modeling_gpt_oss.py) builds
# whatever the config says: experts, q/k/v/o biases, learned sinks, a sliding window on even layers.
TRTLLM_GPT_OSS_FIXED = {"mlp": "moe", "attention_bias": True, "learned_sinks": True, "alternating_layers": True}


def trtllm_cannot_build(model: ModelConfig) -> dict[str, object]:
    """{field: this model's value} where TensorRT-LLM's gpt-oss model would build something else."""
    return {k: getattr(model, k) for k, v in TRTLLM_GPT_OSS_FIXED.items() if getattr(model, k) != v}


def _plan_one(model: ModelConfig, gpu: GpuProfile, qf: QuantFormat, tp: int, ep: int, seq_len: int,
              batch: int, kv_dtype: str) -> FitPlan:
    reasons: list[str] = []
    kernels = {k: kernel_status(gpu.sm, k) or "absent" for k in kernels_needed(model, qf)}
    for kernel, status in kernels.items():
        if status == UNVERIFIED:
            reasons.append(f"{KERNELS[kernel]} on SM {gpu.sm} is unverified upstream: validate the engine on the box")
    if not qf.trtllm_loads_gpt_oss and gpu.sm is not None:
        reasons.append(f"TensorRT-LLM's gpt-oss loader does not read {qf.name} checkpoints: the engine is "
                       f"planned and emulated, serving it on {gpu.name} is unverified")
    differs = trtllm_cannot_build(model)
    if differs and gpu.sm is not None:
        reasons.append(f"TensorRT-LLM's gpt-oss model hard-codes {TRTLLM_GPT_OSS_FIXED} and cannot build "
                       f"{differs}: the engine is planned and runs on the reference runtime; serving it on "
                       f"{gpu.name} needs a model definition TensorRT-LLM does not have")
    if not model.is_moe:
        from checkpoint.convert.tables import DENSE_FORMATS
        if qf.checkpoint not in DENSE_FORMATS:
            buildable = [q for q, f in QUANT_FORMATS.items() if f.checkpoint in DENSE_FORMATS]
            reasons.append(f"{qf.name} is planned, but this pipeline writes dense checkpoints only in the "
                           f"{', '.join(DENSE_FORMATS)} layouts (no dense {qf.checkpoint}): build with --quant "
                           f"{' or '.join(buildable)}")
    weights = weight_bytes_per_gpu(model, qf, tp)
    reserve = runtime_reserve_bytes(model, gpu, tp, batch)
    budget = max(0.0, (gpu.memory_bytes - weights - reserve) * KV_MEMORY_FRACTION)
    full, sliding = kv_bytes_per_sequence(model, tp, kv_dtype, seq_len)
    per_seq = full + sliding
    max_seqs = int(budget // per_seq) if per_seq else 0
    tok_per_s_1, read_1 = decode_speed(model, gpu, qf, tp, 1, 0, kv_dtype)
    tok_per_s_n, _ = decode_speed(model, gpu, qf, tp, batch, seq_len // 2, kv_dtype)

    fits_len = fits_batch = None
    absent = [k for k, status in kernels.items() if status == "absent"]
    if absent:
        verdict = INCOMPATIBLE
        reasons.append(f"the serving stack has no {', '.join(KERNELS[k] for k in absent)} on SM {gpu.sm}")
    elif weights + reserve > gpu.memory_bytes:
        verdict = INCOMPATIBLE
        reasons.append(f"weights need {weights / GB:.1f} GB per GPU plus a {reserve / GB:.1f} GB runtime reserve; "
                       f"{gpu.name} has {gpu.memory_gb:.0f} GB")
    elif max_seqs >= batch:
        verdict = RUNNABLE
        reasons.append(f"{max_seqs} sequences of {seq_len} tokens fit in {budget / GB:.1f} GB of KV cache per GPU")
    else:
        fits_batch = max_seqs or None
        fits_len = _longest_fitting_seq_len(model, tp, kv_dtype, budget / batch, seq_len)
        verdict = LOW_MEMORY if (fits_batch or fits_len) else INCOMPATIBLE
        hint = []
        if fits_len:
            hint.append(f"--max-seq-len {fits_len}")
        if fits_batch:
            hint.append(f"--max-batch-size {fits_batch}")
        reasons.append(f"KV cache for {batch} x {seq_len} tokens needs {batch * per_seq / GB:.1f} GB, "
                       f"{budget / GB:.1f} GB left per GPU" + (f"; try {' or '.join(hint)}" if hint else ""))
    return FitPlan(model=model.name, gpu=gpu.name, quant=qf.name, tp=tp, ep=ep, verdict=verdict,
                params_total=total_params(model), params_active=active_params(model),
                weight_bytes_per_gpu=weights, kv_bytes_per_token=full / seq_len if seq_len else 0.0,
                max_concurrent_sequences=max_seqs, decode_tokens_per_s_batch1=tok_per_s_1, reasons=reasons,
                max_seq_len=seq_len, max_batch_size=batch, kv_dtype=kv_dtype,
                memory_bytes_per_gpu=gpu.memory_bytes, runtime_reserve_bytes=reserve,
                kv_budget_bytes_per_gpu=budget, kv_bytes_per_sequence=per_seq,
                sliding_kv_bytes_per_sequence=sliding, bytes_read_per_token_batch1=read_1,
                decode_tokens_per_s_batch_n=tok_per_s_n,
                prefill_tokens_per_s=prefill_speed(model, gpu, qf, tp, min(seq_len, PREFILL_PROMPT_TOKENS)),
                fits_max_seq_len=fits_len, fits_max_batch_size=fits_batch, kernels=kernels)


def _alternatives(model: ModelConfig, gpu: GpuProfile, seq_len: int, batch: int, kv_dtype: str,
                  tried_tp: int | None) -> list[str]:
    """Hints for an incompatible plan: a larger tp on this GPU, or single GPUs that hold the model."""
    from spec.registry.gpus import GPUS

    hints = []
    if tried_tp is not None:
        qf = quant_for(gpu)
        for t in (2, 4, 8, 16, 32, 64):
            if t > tried_tp and t <= gpu.max_gpus_per_node and model.num_q_heads % t == 0 and \
                    _plan_one(model, gpu, qf, t, 1, seq_len, batch, kv_dtype).verdict != INCOMPATIBLE:
                hints.append(f"fits with --tp {t} on {gpu.name}")
                break
    single = [g.name for g in GPUS.values() if g.sm is not None and _plan_one(
        model, g, quant_for(g), 1, 1, seq_len, batch, kv_dtype).verdict != INCOMPATIBLE]
    if single:
        hints.append(f"fits on one of: {', '.join(single)}")
    return hints


def _longest_fitting_seq_len(model: ModelConfig, tp: int, kv_dtype: str, budget_per_seq: float,
                             upper: int) -> int | None:
    """Largest seq_len (a multiple of 1024, or below 1024 any length) whose KV fits budget_per_seq."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(kv_bytes_per_sequence(model, tp, kv_dtype, mid)) <= budget_per_seq:
            lo = mid
        else:
            hi = mid - 1
    if lo >= 1024:
        lo = lo // 1024 * 1024
    return lo or None


def kv_full_attention_bytes(model: ModelConfig, seq_len: int, kv_dtype: str = "bf16") -> float:
    """What the KV cache would take if every layer attended fully (the comparison for sliding layers)."""
    return model.num_layers * kv_bytes_per_token_per_layer_per_gpu(model, 1, kv_dtype) * seq_len


__all__ = ["FitPlan", "FitError", "plan", "plan_for", "RUNNABLE", "LOW_MEMORY", "INCOMPATIBLE"]
