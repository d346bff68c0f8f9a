"""Mixture of experts as gpt-oss computes it: biased router, top-k then softmax over the k, clamped SwiGLU.

Facts (transformers GptOssTopKRouter / GptOssExperts, OpenAI gpt_oss/torch/model.py MLPBlock):
- router: logits = x @ Wr.T + br (with a bias); take the top-k *logits*, then softmax over those k only;
- SwiGLU with clamps: gate clamped above at `limit` (no lower clamp), up clamped to [-limit, limit],
  glu = gate * sigmoid(alpha * gate), out = (up + 1) * glu (the "+1" is a bias on the linear half);
- every expert's projections have biases; the output is the routing-weighted sum of the k experts' outputs.
Only the selected experts run: tokens are gathered per expert (or, for a handful of tokens, the k selected
experts' weights are gathered per token), never all E experts for every token.

Weight layout here: w_gate_up [E, 2I, H] with gate rows [0, I) and up rows [I, 2I) (concatenated, unlike HF's
interleaved gate_up_proj), b_gate_up [E, 2I], w_down [E, H, I], b_down [E, H] (nn.Linear's [out, in]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, top_k: int):
    """x [N, H] -> (routing weights [N, k] summing to 1, expert indices [N, k])."""
    logits = F.linear(x, weight, bias)
    top_vals, top_idx = torch.topk(logits, top_k, dim=-1, sorted=True)   # top-k of the logits ...
    return torch.softmax(top_vals.float(), dim=-1).to(x.dtype), top_idx  # ... then softmax over the k


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float = 1.702,
                   limit: float | None = 7.0) -> torch.Tensor:
    if limit is not None:
        gate = gate.clamp(max=limit)             # above only
        up = up.clamp(min=-limit, max=limit)     # both sides
    return (up + 1) * (gate * torch.sigmoid(alpha * gate))


def moe(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor | None,
        w_gate_up: torch.Tensor, b_gate_up: torch.Tensor | None, w_down: torch.Tensor,
        b_down: torch.Tensor | None, top_k: int, alpha: float = 1.702, limit: float | None = 7.0,
        gather_threshold: int | None = None) -> torch.Tensor:
    """x [N, H] -> [N, H]. `gather_threshold`: at most this many (token, expert) pairs use the per-token
    weight-gather path (default: the number of experts); more use the per-expert token-gather loop."""
    N, H = x.shape
    E, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    weights, idx = route(x, router_weight, router_bias, top_k)
    pairs = N * top_k
    if pairs <= (E if gather_threshold is None else gather_threshold):
        # Few tokens (decode): gather the k chosen experts' weights per token, one batched matmul each.
        flat = idx.reshape(-1)
        xs = x.repeat_interleave(top_k, dim=0)                               # [N*k, H]
        h = torch.bmm(w_gate_up[flat], xs[:, :, None])[:, :, 0]              # [N*k, 2I]
        if b_gate_up is not None:
            h = h + b_gate_up[flat]
        a = clamped_swiglu(h[:, :inter], h[:, inter:], alpha, limit)
        o = torch.bmm(w_down[flat], a[:, :, None])[:, :, 0]                  # [N*k, H]
        if b_down is not None:
            o = o + b_down[flat]
        return (o.view(N, top_k, H) * weights[:, :, None]).sum(dim=1)
    # Many tokens (prefill): sort (token, slot) pairs by expert and run each hit expert once on its tokens.
    out = torch.zeros_like(x)
    flat_e = idx.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    counts = torch.bincount(flat_e, minlength=E).tolist()
    token_of = order // top_k
    w_of = weights.reshape(-1)[order]
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        tok = token_of[start:start + n]
        h = F.linear(x[tok], w_gate_up[e], None if b_gate_up is None else b_gate_up[e])
        a = clamped_swiglu(h[:, :inter], h[:, inter:], alpha, limit)
        o = F.linear(a, w_down[e], None if b_down is None else b_down[e])
        out.index_add_(0, tok, o * w_of[start:start + n, None])
        start += n
    return out


def dense_mlp(x: torch.Tensor, w_gate_up: torch.Tensor, b_gate_up: torch.Tensor | None, w_down: torch.Tensor,
              b_down: torch.Tensor | None, alpha: float = 1.702, limit: float | None = 7.0) -> torch.Tensor:
    """The dense variant (20b-dense): one clamped-SwiGLU MLP, same layout as one expert."""
    inter = w_gate_up.shape[0] // 2
    h = F.linear(x, w_gate_up, b_gate_up)
    return F.linear(clamped_swiglu(h[..., :inter], h[..., inter:], alpha, limit), w_down, b_down)
