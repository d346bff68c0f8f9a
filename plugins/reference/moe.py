"""Mixture of experts as gpt-oss computes it: biased router, top-k then softmax over the k, clamped SwiGLU.

Facts (transformers GptOssTopKRouter / GptOssExperts, OpenAI gpt_oss/torch/model.py MLPBlock):
- router: logits = x @ Wr.T + br (with a bias); take the top-k *logits*, then softmax over those k only;
- SwiGLU with clamps: gate clamped above at `limit` (no lower clamp), up clamped to [-limit, limit],
  glu = gate * sigmoid(alpha * gate), out = (up + 1) * glu (the "+1" is a bias on the linear half);
- every expert's projections have biases; the output is the routing-weighted sum of the k experts' outputs.
Only the selected experts run: tokens are gathered per expert (or, for one token, its k experts run one by
one or, when small, as one batched matmul over their gathered weights), never all E experts for every token.

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
    weights = torch.softmax(top_vals, dim=-1, dtype=torch.float32)     # ... then softmax over the k
    return (weights if x.dtype == torch.float32 else weights.to(x.dtype)), top_idx


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float = 1.702,
                   limit: float | None = 7.0) -> torch.Tensor:
    if limit is not None:
        gate = gate.clamp(max=limit)             # above only
        up = up.clamp(min=-limit, max=limit)     # both sides
    glu = gate * torch.sigmoid(gate * alpha)
    return torch.addcmul(glu, glu, up)           # (up + 1) * glu: the "+1" is a bias on the linear half


def moe(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor | None,
        w_gate_up: torch.Tensor, b_gate_up: torch.Tensor | None, w_down: torch.Tensor,
        b_down: torch.Tensor | None, top_k: int, alpha: float = 1.702, limit: float | None = 7.0,
        gather_bytes: int = 1 << 20, act_quant_in=None, act_quant_mid=None) -> torch.Tensor:
    """x [N, H] -> [N, H]. Three schedules, the same math (each runs only the selected experts):
    - one token whose k experts' weights total <= gather_bytes: gather those weights, two batched matmuls;
    - one token otherwise: a loop over its k experts, no weight copies;
    - several tokens: a loop over the hit experts, each on the tokens routed to it.
    act_quant_in / act_quant_mid: the experts' activation fake-quant (W4A4, W8A8 formats) applied to the
    gate/up GEMM input and to the down GEMM input; the router always sees the unquantized x."""
    N, H = x.shape
    E, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    weights, idx = route(x, router_weight, router_bias, top_k)
    if act_quant_in is not None or act_quant_mid is not None:
        return _moe_quantized(x, weights, idx, w_gate_up, b_gate_up, w_down, b_down, alpha, limit,
                              act_quant_in, act_quant_mid)
    if N == 1:
        per_expert = (w_gate_up[0].numel() + w_down[0].numel()) * w_gate_up.element_size()
        if top_k * per_expert <= gather_bytes:
            # Small experts: copy the k chosen experts' weights (index_select) and run them as one mat-vec.
            e = idx[0]
            h = torch.mv(w_gate_up.index_select(0, e).view(top_k * two_i, H), x[0]).view(top_k, two_i)
            if b_gate_up is not None:
                h = h + b_gate_up.index_select(0, e)
            a = clamped_swiglu(h[:, :inter], h[:, inter:], alpha, limit) * weights.view(top_k, 1)  # [k, I]
            out = (w_down.index_select(0, e) * a.unsqueeze(1)).sum(dim=(0, 2))                  # sum_e W2_e a_e
            if b_down is not None:
                out = torch.addmm(out.unsqueeze(0), weights, b_down.index_select(0, e))       # + sum_e w_e b_e
            return out.view(1, H)
        out = None
        for j, e in enumerate(idx[0].tolist()):
            h = F.linear(x, w_gate_up[e], None if b_gate_up is None else b_gate_up[e])
            a = clamped_swiglu(h[:, :inter], h[:, inter:], alpha, limit)
            o = F.linear(a, w_down[e], None if b_down is None else b_down[e]) * weights[:, j:j + 1]
            out = o if out is None else out + o
        return out
    # Several tokens (prefill, batched decode): sort (token, slot) pairs by expert, run each hit expert once.
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


def _moe_quantized(x, weights, idx, w_gate_up, b_gate_up, w_down, b_down, alpha, limit, q_in, q_mid):
    """The expert loop with activation fake-quant: each GEMM input quantized as the engine's kernel does
    (the input once for all experts, the SwiGLU output per token and expert; routing weights after)."""
    xq = x if q_in is None else q_in(x)
    out = torch.zeros_like(x)
    run_experts(out, xq, weights, idx, w_gate_up, b_gate_up, w_down, b_down, alpha, limit, q_mid)
    return out


def run_experts(out, xq, weights, idx, w_gate_up, b_gate_up, w_down, b_down, alpha, limit, q_mid=None,
                first: int = 0) -> None:
    """Add into `out` [N, H] the routed outputs of experts [first, first + len(w_gate_up)) (the weights given
    are those experts' rows), each hit expert once on its tokens, in ascending expert order: called once with
    all experts, or once per consecutive slice of them (a layer whose experts do not fit memory at once),
    the float operations and their order are the same, so the result is bit-identical."""
    inter = w_gate_up.shape[1] // 2
    hit = idx.unique()
    for e in hit[(hit >= first) & (hit < first + w_gate_up.shape[0])].tolist():
        tok, slot = (idx == e).nonzero(as_tuple=True)
        j = e - first
        h = F.linear(xq[tok], w_gate_up[j], None if b_gate_up is None else b_gate_up[j])
        a = clamped_swiglu(h[:, :inter], h[:, inter:], alpha, limit)
        if q_mid is not None:
            a = q_mid(a)
        o = F.linear(a, w_down[j], None if b_down is None else b_down[j])
        out.index_add_(0, tok, o * weights[tok, slot, None])


def dense_mlp(x: torch.Tensor, w_gate_up: torch.Tensor, b_gate_up: torch.Tensor | None, w_down: torch.Tensor,
              b_down: torch.Tensor | None, alpha: float = 1.702, limit: float | None = 7.0,
              act_quant_in=None, act_quant_mid=None) -> torch.Tensor:
    """The dense variant (20b-dense): one clamped-SwiGLU MLP, same layout as one expert."""
    inter = w_gate_up.shape[0] // 2
    h = F.linear(x if act_quant_in is None else act_quant_in(x), w_gate_up, b_gate_up)
    a = clamped_swiglu(h[..., :inter], h[..., inter:], alpha, limit)
    return F.linear(a if act_quant_mid is None else act_quant_mid(a), w_down, b_down)
