"""Attention with learned sinks, sliding window and StreamingLLM sink tokens, against any set of cached keys.

Visibility is computed from token positions, not from buffer order, so the same op serves prefill, chunked
prefill and decode against a ring-buffer KV cache (slots hold keys in any order; empty slots have position -1).

Facts (transformers masking_utils.sliding_window_overlay, OpenAI gpt_oss/torch/model.py sdpa):
- sliding window W: the query at position i sees keys j with 0 <= i - j < W (itself and W-1 before it);
- learned sinks: one logit per q head, appended as an extra softmax column and dropped after the softmax, so
  attention weights sum to < 1 (the sink "absorbs" probability mass); no value vector belongs to it;
- GQA: q head h reads kv head h // (num_q_heads / num_kv_heads).
"""

from __future__ import annotations

import torch


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None,
                   sink_tokens: int = 0) -> torch.Tensor:
    """q_pos [B, T], k_pos [B, S] (-1 = empty slot, -1 in q_pos = padding) -> visible bool [B, T, S]."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    visible = (k >= 0) & (k <= q)                             # causal; empty slots never visible
    if window is not None:
        in_window = (q - k) < window                          # i - j < W: W keys including the query itself
        if sink_tokens:
            in_window = in_window | (k < sink_tokens)         # StreamingLLM: first S tokens always visible
        visible = visible & in_window
    return visible


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                   sinks: torch.Tensor | None, sm_scale: float, blocked: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, S, D], visible bool [B, T, S], sinks [Hq] or None -> [B, Hq, T, D].

    Scores and softmax run in fp32 whatever the input dtype (what the engines' attention kernels do).
    `blocked` may pass ~visible already shaped [B, 1, 1, T, S] (shared by the layers of one forward).
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    qg = _f32(q.reshape(B, Hkv, G * T, D))                    # q heads grouped under their kv head
    scores = torch.matmul(qg, _f32(k).transpose(-1, -2)).mul_(sm_scale).view(B, Hkv, G, T, S)
    if blocked is None:
        blocked = visible.logical_not().view(B, 1, 1, T, S)
    scores.masked_fill_(blocked, float("-inf"))
    if sinks is not None:
        # The learned sink: an extra column with a per-head logit, in the softmax, then dropped.
        sink_col = _f32(sinks).view(1, Hkv, G, 1, 1).expand(B, Hkv, G, T, 1)
        probs = torch.softmax(torch.cat([scores, sink_col], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # padding rows see nothing: output 0
    out = torch.matmul(probs.reshape(B, Hkv, G * T, S), _f32(v)).view(B, Hq, T, D)
    return out if out.dtype == q.dtype else out.to(q.dtype)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def mask_bias(visible: torch.Tensor) -> torch.Tensor:
    """visible bool [B, T, S] -> additive fp32 bias [B, 1, T, S] (0 or -inf). A query row that sees nothing
    (padding, a finished sequence) gets an all-zero row instead: its output is garbage but finite, and unused."""
    bias = torch.zeros(visible.shape, dtype=torch.float32, device=visible.device)
    bias.masked_fill_(visible.logical_not() & visible.any(dim=-1, keepdim=True), float("-inf"))
    return bias[:, None]


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def sink_attention_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                         sinks: torch.Tensor | None, sm_scale: float) -> torch.Tensor:
    """The same op as sink_attention, through a fused attention kernel (CPU flash attention) that also returns
    the log-sum-exp of each row. The sink column then needs no extra column: with lse = log sum_j exp(s_j),

        softmax([s, sink])[:-1] @ V  =  softmax(s) @ V * exp(lse) / (exp(lse) + exp(sink))
                                     =  softmax(s) @ V * sigmoid(lse - sink).

    q [B, Hq, T, D], k/v [B, Hkv, S, D], bias [B, 1, T, S] from mask_bias; falls back to sink_attention off CPU.
    """
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    if _FLASH_CPU is None or q.device.type != "cpu":
        return sink_attention(q, k, v, bias[:, 0] == 0, sinks, sm_scale)
    if T == 1:
        # Decode: the G q heads of a kv head become G query rows against that kv head (no k/v copies).
        out, lse = _FLASH_CPU(q.view(B, Hkv, G, D), k, v, attn_mask=bias, scale=sm_scale)
    else:
        if G > 1:
            k = k.repeat_interleave(G, dim=1)
            v = v.repeat_interleave(G, dim=1)
        out, lse = _FLASH_CPU(q, k, v, attn_mask=bias, scale=sm_scale)
    out = out.reshape(B, Hq, T, D)
    if sinks is not None:
        keep = torch.sigmoid(lse.reshape(B, Hq, T) - sinks.view(1, Hq, 1).to(lse.dtype))   # mass not sunk
        out = out * keep[..., None].to(out.dtype)
    return out
