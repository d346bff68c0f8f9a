"""How much memory ONNX Runtime needs to run one forward of the fp32 graph (the "onnxruntime-cpu" lowering), from
the network alone: what runtime.executors.choice weighs before it picks ONNX Runtime, and the most tokens the
executor forwards at once.

    est = ort_peak_bytes(network, tokens=4000)       # a PeakEstimate; est.total, est.terms
    max_forward_tokens(network, budget_bytes)        # the largest `tokens` whose estimate fits the budget

Terms (float32, 4 bytes):
- weights: the graph's weight matrices, held by the session (biases, norms and sinks, under 1%, are left out);
- moe_rows: the MoE's per-token memory, in one place (`moe_token_bytes`). The sparse lowering
  (plugins/onnx/experts.py) holds tokens * k rows of activations (gathered inputs, gate|up, SwiGLU, down
  outputs); the dense gather before it held tokens * k whole expert weight matrices (tokens * k * expert_bytes,
  33.5 GB for a 4,000-token prompt on a 58M-parameter model), which is what made long prompts fall back;
- attention: one layer's scores [batch, heads, tokens, past + tokens] (and their softmax);
- logits: the graph returns every position's logits [tokens, vocab];
- kv_cache: past and present K/V of every layer, both live during the call.
An estimate, not a measurement: it is meant to say "this will not fit" before ONNX Runtime finds out by being killed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from spec.network import Network

FLOAT32_BYTES = 4
# Of this machine's memory, what the ONNX Runtime graph may take (the rest: Triton, the other models, the OS).
ORT_MEMORY_FRACTION = 0.5
# A model no other CPU runtime here can hold (the reference runtime's fp32 weights do not fit: the full 20b) may take
# this much in ONNX Runtime's packed lowering, most of it pages memory-mapped from the graph's data file.
ORT_LARGE_MODEL_FRACTION = 0.8


def ort_budget_bytes(fraction: float = ORT_MEMORY_FRACTION) -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * fraction)


@dataclass(frozen=True)
class PeakEstimate:
    tokens: int
    terms: dict

    @property
    def total(self) -> int:
        return int(sum(self.terms.values()))

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in self.terms.items())
        return f"~{self.total / 2**30:.2f} GiB for {self.tokens} tokens ({parts} GiB)"


def ort_budget_for(network: Network) -> int:
    """What ONNX Runtime may take for this network: half the memory, or ORT_LARGE_MODEL_FRACTION of it for a model
    whose fp32 weights exceed the whole memory (the reference runtime cannot run it at all, so ONNX Runtime's
    packed lowering is the only CPU executor left)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ort_budget_bytes(ORT_LARGE_MODEL_FRACTION if weight_bytes(network) > ram else ORT_MEMORY_FRACTION)


def weight_bytes(network: Network) -> int:
    n = network.embedding.vocab_size * network.embedding.hidden_size
    n += network.lm_head.in_features * network.lm_head.out_features
    for layer in network.layers:
        a = layer.attention
        n += sum(lin.in_features * lin.out_features for lin in (a.qkv, a.out))
        m = layer.mlp
        if m.kind == "moe":
            n += m.num_experts * _expert_params(m) + m.router.in_features * m.router.out_features
        else:
            n += sum(lin.in_features * lin.out_features for lin in (m.gate, m.up, m.down))
    return FLOAT32_BYTES * n


def _expert_params(m) -> int:
    return sum(e.in_features * e.out_features for e in (m.gate, m.up, m.down))


def moe_token_bytes(network: Network, tokens: int) -> int:
    """The MoE's memory that grows with the tokens of one forward, in its largest layer (ONNX Runtime frees one
    layer's intermediates before the next): the sparse lowering's tokens * k activation rows (inputs [in],
    gate|up [2I], SwiGLU [I], down [out]), never weights."""
    per_token = [m.top_k * (m.gate.in_features + m.gate.out_features + m.up.out_features + m.gate.out_features
                            + m.down.out_features) * FLOAT32_BYTES
                 for m in (l.mlp for l in network.layers) if m.kind == "moe"]
    return int(tokens) * max(per_token, default=0)


def ort_peak_bytes(network: Network, tokens: int, batch: int = 1, past: int = 0,
                   weights: int | None = None) -> PeakEstimate:
    """One forward of `tokens` new tokens per row over `batch` rows, `past` cached tokens per row. weights: the
    bytes the session holds when known (runtime.executors.onnxruntime.session_weight_bytes: the packed lowering
    holds FP4 experts and bf16 weights as stored), else every weight in fp32."""
    n = int(tokens) * int(batch)
    heads = max(l.attention.num_q_heads for l in network.layers)
    kv_per_token = sum(2 * l.attention.num_kv_heads * l.attention.head_dim for l in network.layers) * FLOAT32_BYTES
    terms = {
        "weights": weight_bytes(network) if weights is None else int(weights),
        "moe_rows": moe_token_bytes(network, n),
        "attention": 2 * FLOAT32_BYTES * batch * heads * tokens * (past + tokens),
        "logits": FLOAT32_BYTES * n * network.vocab_size,
        "kv_cache": 2 * batch * (past + tokens) * kv_per_token,
    }
    return PeakEstimate(n, terms)


def max_forward_tokens(network: Network, budget_bytes: int, limit: int = 1 << 20, weights: int | None = None) -> int:
    """The most tokens (batch 1, no past) one forward may take for its estimate to stay within budget_bytes;
    0 when not even the weights fit. weights: as ort_peak_bytes."""
    lo, hi = 0, int(limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ort_peak_bytes(network, mid, weights=weights).total <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo
