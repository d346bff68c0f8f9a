"""The KV cache of the reference runtime.

Layers with the same slot policy share one slot->position table (one "group"):
- full layers: slot = token position; the buffers grow (capacity doubles) as the context grows;
- sliding layers: a ring buffer of `sink_tokens + window` slots, fixed at creation, so their memory is bounded
  by the window however long the sequence. Slots [0, S) hold the StreamingLLM sink tokens (positions 0..S-1,
  written once); position p >= S lives in slot S + (p - S) % window.
Every slot records the position it holds (-1 = empty), and attention masks are computed from positions
(plugins.reference.attention.attention_mask), so ring order never matters.

Use per forward: `plan = cache.begin(positions)` (positions [B, T], -1 = padding / finished sequence), then per
layer `k_all, v_all = cache.update(layer, k_new, v_new)` and attend with `plan.mask(layer)`.
A forward may cover any contiguous range of the cache's rows: `begin(positions, first_row=r)` runs rows
[r, r + B) (views, no copies), so a scheduler computes only its running rows, and prefills new rows in place.
Rows are managed with `reset_rows` (forget a row) and `copy_rows_from` (move a sequence between rows or caches).
Decode (T == 1) writes first and attends over the buffers in place; a multi-token chunk on a ring layer
attends over [old ring ; new keys] first and keeps only the entries that survive, because writing first
would overwrite keys the chunk's earlier queries still need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spec.network import CacheKind, Network
from spec.params import kv_bytes_per_token_per_layer
from plugins.reference.attention import attention_mask, mask_bias


@dataclass
class _Group:
    """The layers of one cache kind (spec.network.CacheKind: full, or window + sink tokens)."""
    kind: CacheKind
    layers: list[int]
    pos: torch.Tensor           # [batch_size, capacity] long, position held by each slot, -1 = empty

    @property
    def window(self) -> int | None:          # None: full attention
        return self.kind.window

    @property
    def sink_tokens(self) -> int:
        return self.kind.sink_tokens

    @property
    def ring(self) -> bool:
        return not self.kind.full

    @property
    def capacity(self) -> int:
        return self.pos.shape[1]


@dataclass
class _GroupPlan:
    mask: torch.Tensor          # [B, T, S_attended] bool
    write: tuple   # (batch idx, token idx or None for a one-token step of every sequence, slot idx)
    concat: bool                # attend over cat(old buffers, new) instead of the buffers
    used: int                   # slots to attend over (full layers: highest position + 1)
    rows: slice = field(default_factory=lambda: slice(None))   # the cache rows this forward covers
    bias: torch.Tensor | None = None   # mask as an additive bias, made on first use
    blocked: torch.Tensor | None = None  # ~mask, made on first use


class ForwardPlan:
    def __init__(self, cache: "KVCache", plans: dict[int, _GroupPlan]):
        self._cache = cache
        self._plans = plans

    def mask(self, layer: int) -> torch.Tensor:
        """visible bool [B, T, S] for this layer's keys."""
        return self._plans[self._cache.group_of[layer]].mask

    def blocked(self, layer: int) -> torch.Tensor:
        """~mask shaped [B, 1, 1, T, S], as sink_attention takes it."""
        plan = self._plans[self._cache.group_of[layer]]
        if plan.blocked is None:
            B, T, S = plan.mask.shape
            plan.blocked = plan.mask.logical_not().view(B, 1, 1, T, S)
        return plan.blocked

    def bias(self, layer: int) -> torch.Tensor:
        """The same mask as an additive fp32 bias [B, 1, T, S] (plugins.reference.attention.mask_bias)."""
        plan = self._plans[self._cache.group_of[layer]]
        if plan.bias is None:
            plan.bias = mask_bias(plan.mask)
        return plan.bias


class KVCache:
    def __init__(self, network: Network, batch_size: int, capacity: int = 256, dtype=torch.float32,
                 device="cpu"):
        """capacity: initial slots of the full-attention layers (they grow on demand)."""
        self.network = network
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.groups: list[_Group] = []
        self.group_of: dict[int, int] = {}
        keys: dict[CacheKind, int] = {}
        for layer in network.layers:
            key = layer.attention.cache_kind
            if key not in keys:
                slots = max(1, capacity) if key.full else key.slots
                keys[key] = len(self.groups)
                self.groups.append(_Group(key, [],
                                          torch.full((batch_size, slots), -1, dtype=torch.long, device=self.device)))
            self.group_of[layer.index] = keys[key]
            self.groups[keys[key]].layers.append(layer.index)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for layer in network.layers:
            a = layer.attention
            slots = self.groups[self.group_of[layer.index]].capacity
            shape = (batch_size, a.num_kv_heads, slots, a.head_dim)
            self.k.append(torch.zeros(shape, dtype=dtype, device=self.device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=self.device))
        self._plans: dict = {}

    # -- sizes ---------------------------------------------------------------------------------------------
    def layer_slots(self, layer: int) -> int:
        return self.k[layer].shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def seq_lengths(self) -> torch.Tensor:
        """Tokens seen per sequence (highest cached position + 1)."""
        return max(g.pos.max(dim=1).values for g in self.groups) + 1

    # -- rows ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def reset_rows(self, rows) -> None:
        """Forget everything cached for these rows (masks come from the slot->position tables, so emptying a
        row's positions frees it; its stale keys are never attended to)."""
        rows = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        for g in self.groups:
            g.pos[rows] = -1

    @torch.inference_mode()
    def copy_rows_from(self, src: "KVCache", src_rows, dst_rows) -> None:
        """Rows `src_rows` of `src` (which may be this cache) become rows `dst_rows` of this one: keys, values
        and the positions they hold. Full-attention buffers grow to hold the source's slots."""
        if len(src.groups) != len(self.groups) or len(src.k) != len(self.k):
            raise ValueError("copy_rows_from: the caches belong to different networks")
        src_rows = torch.as_tensor(list(src_rows), dtype=torch.long, device=self.device)
        dst_rows = torch.as_tensor(list(dst_rows), dtype=torch.long, device=self.device)
        if src_rows.numel() != dst_rows.numel():
            raise ValueError(f"copy_rows_from: {src_rows.numel()} source rows for {dst_rows.numel()} destination rows")
        if src_rows.numel() == 0:
            return
        for gd, gs in zip(self.groups, src.groups):
            if gd.window != gs.window or gd.layers != gs.layers:
                raise ValueError("copy_rows_from: the caches have different layer groups")
            n = gs.capacity
            if n > gd.capacity:
                if gd.ring:
                    raise ValueError("copy_rows_from: ring buffers of different sizes")
                self._grow(gd, n)
            rows_pos = gs.pos[src_rows]                       # gathered first: src may be self
            gd.pos[dst_rows] = -1
            gd.pos[dst_rows, :n] = rows_pos
            for i in gd.layers:
                k, v = src.k[i][src_rows], src.v[i][src_rows]
                self.k[i][dst_rows, :, :n] = k
                self.v[i][dst_rows, :, :n] = v

    # -- growth of the full layers ----------------------------------------------------------------------------
    def _grow(self, g: _Group, needed: int) -> None:
        new_cap = g.capacity
        while new_cap < needed:
            new_cap *= 2
        extra = new_cap - g.capacity
        g.pos = torch.cat([g.pos, g.pos.new_full((self.batch_size, extra), -1)], dim=1)
        for i in g.layers:
            pad = self.k[i].new_zeros(self.k[i].shape[:2] + (extra,) + self.k[i].shape[3:])
            self.k[i] = torch.cat([self.k[i], pad], dim=2)
            self.v[i] = torch.cat([self.v[i], pad.clone()], dim=2)

    # -- one forward -----------------------------------------------------------------------------------------
    def begin(self, positions: torch.Tensor, first_row: int = 0) -> ForwardPlan:
        """positions [B, T] long, -1 for padding, for cache rows [first_row, first_row + B). Tokens of one
        sequence must be contiguous and increasing."""
        B, T = positions.shape
        if first_row < 0 or first_row + B > self.batch_size:
            raise ValueError(f"positions cover rows [{first_row}, {first_row + B}), the cache has "
                             f"{self.batch_size} rows")
        rows = slice(first_row, first_row + B)
        valid = positions >= 0
        # Decode with every sequence running: one token each, no nonzero() needed.
        dense_step = T == 1 and bool(valid.all())
        if dense_step:
            b, t = torch.arange(B, device=positions.device), None
            p_all = positions[:, 0]
        needed = int(positions.max()) + 1
        plans = {}
        for gi, g in enumerate(self.groups):
            if not g.ring:
                if needed > g.capacity:
                    self._grow(g, needed)
                pos = g.pos[rows]
                if dense_step:
                    slots = p_all
                else:
                    b, t = valid.nonzero(as_tuple=True)
                    slots = positions[b, t]
                pos[b, slots] = slots
                # slot = position, so these rows hold nothing at or beyond the highest position they reach
                used = max(needed, 1)
                mask = attention_mask(positions, pos[:, :used])
                plans[gi] = _GroupPlan(mask, (b, t, slots), concat=False, used=used, rows=rows)
                continue
            pos = g.pos[rows]
            S, W = g.sink_tokens, g.window
            if dense_step:
                p = p_all
                gb, gt = b, t
            else:
                # Only the newest W tokens of this chunk (and sink tokens) survive in the ring.
                last = positions.max(dim=1, keepdim=True).values
                keep = valid & ((positions < S) | (positions > last - W))
                gb, gt = keep.nonzero(as_tuple=True)
                p = positions[gb, gt]
            slots = torch.where(p < S, p, S + (p - S) % W) if S else p % W
            if T == 1:
                pos[gb, slots] = p
                mask = attention_mask(positions, pos, W, S)
                plans[gi] = _GroupPlan(mask, (gb, gt, slots), concat=False, used=g.capacity, rows=rows)
            else:
                k_pos = torch.cat([pos, positions], dim=1)
                mask = attention_mask(positions, k_pos, W, S)
                pos[gb, slots] = p
                plans[gi] = _GroupPlan(mask, (gb, gt, slots), concat=True, used=g.capacity, rows=rows)
        self._plans = plans
        return ForwardPlan(self, plans)

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """k_new/v_new [B, T, Hkv, D] (roped) -> the keys/values to attend over, [B, Hkv, S, D]."""
        plan = self._plans[self.group_of[layer]]
        b, t, slots = plan.write
        k_buf, v_buf = self.k[layer][plan.rows], self.v[layer][plan.rows]
        k_rows = k_new[:, 0] if t is None else k_new[b, t]          # [M, Hkv, D]
        v_rows = v_new[:, 0] if t is None else v_new[b, t]
        if plan.concat:
            k_all = torch.cat([k_buf, k_new.transpose(1, 2).to(k_buf.dtype)], dim=2)
            v_all = torch.cat([v_buf, v_new.transpose(1, 2).to(v_buf.dtype)], dim=2)
            k_buf[b, :, slots] = k_rows
            v_buf[b, :, slots] = v_rows
            return k_all, v_all
        k_buf[b, :, slots] = k_rows                                 # index_put casts to the cache dtype
        v_buf[b, :, slots] = v_rows
        if plan.used == k_buf.shape[2]:
            return k_buf, v_buf
        return k_buf[:, :, :plan.used], v_buf[:, :, :plan.used]


def kv_cache_bytes(network: Network, context: int, batch_size: int = 1, kv_dtype: str = "bf16",
                   all_full: bool = False) -> int:
    """KV-cache bytes at `context` tokens: sliding layers hold min(context, window + sink_tokens) entries,
    full layers `context`. all_full=True: as if every layer were full attention (the comparison baseline)."""
    total = 0
    for layer in network.layers:
        a = layer.attention
        slots = context if (all_full or a.cache_kind.full) else min(context, a.cache_kind.slots)
        total += kv_bytes_per_token_per_layer(a.num_kv_heads, a.head_dim, kv_dtype) * slots
    return total * batch_size
