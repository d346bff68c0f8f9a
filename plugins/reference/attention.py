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
                   sinks: torch.Tensor | None, sm_scale: float) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, S, D], visible bool [B, T, S], sinks [Hq] or None -> [B, Hq, T, D].

    Scores and softmax run in fp32 whatever the input dtype (what the engines' attention kernels do).
    """
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    qg = q.reshape(B, Hkv, G * T, D).float()                 # q heads grouped under their kv head
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * sm_scale   # [B, Hkv, G*T, S]
    scores = scores.view(B, Hkv, G, T, -1)
    scores = scores.masked_fill(~visible[:, None, None, :, :], float("-inf"))
    if sinks is not None:
        # The learned sink: an extra column with a per-head logit, in the softmax, then dropped.
        sink_col = sinks.float().view(1, Hkv, G, 1, 1).expand(B, Hkv, G, T, 1)
        probs = torch.softmax(torch.cat([scores, sink_col], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # padding rows see nothing: output 0
    out = torch.matmul(probs.view(B, Hkv, G * T, -1), v.float())
    return out.view(B, Hq, T, D).to(q.dtype)
