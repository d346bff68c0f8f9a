"""Model assembly: a Network (spec.network) + canonical tensors (spec.canonical) -> a runnable model.

The network definition decides everything: which tensor each parameter is, the attention kind and window of
each layer, sinks, RoPE, MoE or dense MLP, and the quant format of every linear (weights are dequantized once
here; see plugins.reference.linear). This module never reads a checkpoint or a checkpoint config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from spec.canonical import input_scale_name
from spec.network import Attention, DenseMLP, MoE, Network, Rope
from plugins.reference.attention import sink_attention, sink_attention_fused
from plugins.reference.linear import (PreparedLinear, activation_quantizer, prepare_expert_weights,
                                      prepare_linear)
from plugins.reference.moe import dense_mlp, moe
from plugins.reference.norm import rms_norm
from plugins.reference.rope import apply_rope_full, rope_cos_sin, rope_frequencies, rope_full_tables
from runtime.kv_cache import KVCache


class WeightError(ValueError):
    """A canonical tensor the network needs is missing or has the wrong shape."""


def _tensor(tensors: Mapping, name: str, shape: tuple[int, ...]):
    if name not in tensors:
        raise WeightError(f"tensor {name!r} is required by the network but missing from the checkpoint")
    value = tensors[name]
    if tuple(value.shape) != tuple(shape):
        raise WeightError(f"tensor {name!r} has shape {tuple(value.shape)}, the network expects {tuple(shape)}")
    return value


def _lin(p: PreparedLinear, x: torch.Tensor) -> torch.Tensor:
    # PreparedLinear.__call__ without the Python call when the format quantizes no activations.
    return F.linear(x, p.weight, p.bias) if p.act_quant is None else p(x)


@dataclass
class _AttnWeights:
    spec: Attention
    qkv: PreparedLinear
    out: PreparedLinear
    sinks: torch.Tensor | None
    kv_quant: object = None       # FP8 KV cache emulation: (k, v) -> (k, v) as the cache stores them


@dataclass
class _MlpWeights:
    spec: MoE | DenseMLP
    router: PreparedLinear | None
    w_gate_up: torch.Tensor       # [E, 2I, H] (dense: [2I, H]); gate rows first, then up rows
    b_gate_up: torch.Tensor | None
    w_down: torch.Tensor
    b_down: torch.Tensor | None
    act_in: object = None         # activation fake-quant of the gate/up GEMM input (W4A4 / W8A8 formats)
    act_mid: object = None        # ... of the down GEMM input


# Calibrated activation scales travel as `<module>.input_scale` (ModelOpt's export name, named by
# spec.canonical.input_scale_name): a scalar, or one per expert (the fused MoE GEMM then uses their max, as
# TensorRT-LLM does). Quantized checkpoints (hf-nvfp4 W4A4, hf-fp8) carry them; weight-only ones do not.


# An FP8 KV cache (ModelOpt kv_cache_quant_algo FP8) stores K (after RoPE) and V in e4m3 with calibrated
# per-layer scales, which travel as `<qkv module>.k_scale` / `.v_scale` (spec.canonical.KV_SCALE_SHAPES;
# ModelOpt: k_proj.k_scale, v_proj.v_scale); when the checkpoint has them, K and V are quantized on their way
# into the cache.
def _kv_quantizer(tensors: Mapping, spec: Attention):
    base = spec.qkv.weight.removesuffix(".weight")
    ks, vs = tensors.get(base + ".k_scale"), tensors.get(base + ".v_scale")
    if ks is None and vs is None:
        return None
    if ks is None or vs is None:
        raise WeightError(f"{base}: an FP8 KV cache needs both k_scale and v_scale; the checkpoint has only one")
    from plugins.reference.linear import fp8_fake_quant
    k_s, v_s = float(torch.as_tensor(ks).float()), float(torch.as_tensor(vs).float())
    return lambda k, v: (fp8_fake_quant(k, k_s), fp8_fake_quant(v, v_s))


def _input_scale(tensors: Mapping, *specs):
    scales = []
    for spec in specs:
        name = input_scale_name(spec.weight)
        if name in tensors:
            scales.append(float(torch.as_tensor(tensors[name]).float().max()))
    return max(scales) if scales else None


class ReferenceModel:
    def __init__(self, network: Network, tensors: Mapping[str, object], dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", load_layers: bool = True):
        self.network = network
        self._tensors = None if load_layers else tensors
        self.dtype = dtype
        self.device = torch.device(device)
        net, H = network, network.hidden_size

        # The embedding is read whole only by a model that holds its layers (a 20b one is 2.3 GB in float32);
        # layer_by_layer's caller looks up the rows it needs.
        self.embed = None
        if load_layers:
            self.embed = prepare_linear(_tensor(tensors, net.embedding.weight, (net.vocab_size, H)), None, "bf16",
                                        net.embedding.weight, dtype, self.device).weight
        self.rope_tables: dict[Rope, tuple[torch.Tensor, float]] = {}
        self._rope_cache: dict[Rope, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in net.layers:
            rope = layer.attention.rope
            if rope not in self.rope_tables:             # keyed by the (frozen) Rope: layers that share it share tables
                inv_freq, conc = rope_frequencies(rope)
                self.rope_tables[rope] = (inv_freq.to(self.device), conc)
        self.eps = [(layer.attn_norm.eps, layer.mlp_norm.eps) for layer in net.layers]
        self.layers = []
        if not load_layers:
            return
        self.layers = [self.load_layer(i, tensors) for i in range(len(net.layers))]
        self.final_norm = self._norm(net.final_norm, tensors)
        self.lm_head = self._linear(net.lm_head, tensors)

    def _linear(self, spec, tensors) -> PreparedLinear:
        w = _tensor(tensors, spec.weight, (spec.out_features, spec.in_features))
        b = None if spec.bias is None else _tensor(tensors, spec.bias, (spec.out_features,))
        return prepare_linear(w, b, spec.quant, spec.weight, self.dtype, self.device,
                              input_scale=_input_scale(tensors, spec))

    def _norm(self, spec, tensors) -> torch.Tensor:
        return _tensor(tensors, spec.weight, (spec.size,)).to(self.device, torch.float32)

    @classmethod
    def layer_by_layer(cls, network: Network, tensors: Mapping[str, object], dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> "ReferenceModel":
        """A model that holds no layer, no embedding and no head (the caller reads the embedding rows it needs): each
        layer's weights are built by load_layer(i) when the caller needs them and dropped after, so a pass
        over the layers holds one layer at a time (builder.calibrate's streaming calibration)."""
        return cls(network, tensors, dtype, device, load_layers=False)

    def load_layer(self, i: int, tensors: Mapping[str, object] | None = None, experts: bool = True):
        """Layer i's (attn_norm, attention, mlp_norm, mlp) weights, dequantized; experts=False leaves a MoE
        layer's expert weights out (w_gate_up etc. None; expert_weights builds them for a slice of experts)."""
        tensors = self._tensors if tensors is None else tensors
        layer = self.network.layers[i]
        a = layer.attention
        sinks = None
        if a.learned_sinks:
            sinks = _tensor(tensors, a.sinks, (a.num_q_heads,)).to(self.device, torch.float32)
        attn = _AttnWeights(a, self._linear(a.qkv, tensors), self._linear(a.out, tensors), sinks,
                            _kv_quantizer(tensors, a))
        return (self._norm(layer.attn_norm, tensors), attn, self._norm(layer.mlp_norm, tensors),
                self._mlp(layer.mlp, tensors, experts))

    def expert_weights(self, m: MoE, tensors: Mapping[str, object], num_experts: int):
        """(w_gate_up [E, 2I, H], b_gate_up [E, 2I], w_down [E, H, I], b_down [E, H]) of the experts whose
        canonical values `tensors` holds (all of them, or rows [a, b) of each: num_experts = b - a)."""
        dt, dev = self.dtype, self.device

        def experts(spec):
            w = prepare_expert_weights(_tensor(tensors, spec.weight, (num_experts, spec.out_features,
                                                                      spec.in_features)),
                                       spec.quant, spec.weight, dt, dev)
            b = None if spec.bias is None else \
                _tensor(tensors, spec.bias, (num_experts, spec.out_features)).to(dev, dt)
            return w, b
        (wg, bg), (wu, bu), (wd, bd) = experts(m.gate), experts(m.up), experts(m.down)
        # gate and up side by side (not interleaved): one GEMM for both.
        w_gate_up = torch.cat([wg, wu], dim=1).contiguous()
        b_gate_up = None if bg is None or bu is None else torch.cat([bg, bu], dim=-1).contiguous()
        return w_gate_up, b_gate_up, wd, bd

    def _mlp(self, m, tensors, experts: bool = True) -> _MlpWeights:
        dt, dev = self.dtype, self.device
        if isinstance(m, MoE):
            w_gate_up = b_gate_up = wd = bd = None
            if experts:
                w_gate_up, b_gate_up, wd, bd = self.expert_weights(m, tensors, m.num_experts)
            router = prepare_linear(_tensor(tensors, m.router.weight, (m.num_experts, m.router.in_features)),
                                    None if m.router.bias is None else
                                    _tensor(tensors, m.router.bias, (m.num_experts,)),
                                    m.router.quant, m.router.weight, dt, dev)
        else:
            def one(spec):
                w = prepare_expert_weights(_tensor(tensors, spec.weight, (spec.out_features, spec.in_features)),
                                           spec.quant, spec.weight, dt, dev)
                b = None if spec.bias is None else _tensor(tensors, spec.bias, (spec.out_features,)).to(dev, dt)
                return w, b
            (wg, bg), (wu, bu), (wd, bd) = one(m.gate), one(m.up), one(m.down)
            router = None
            # gate and up side by side (not interleaved): one GEMM for both.
            w_gate_up = torch.cat([wg, wu], dim=0).contiguous()
            b_gate_up = None if bg is None or bu is None else torch.cat([bg, bu], dim=-1).contiguous()
        act_in = activation_quantizer(m.gate.quant, _input_scale(tensors, m.gate, m.up), m.gate.weight)
        act_mid = activation_quantizer(m.down.quant, _input_scale(tensors, m.down), m.down.weight)
        return _MlpWeights(m, router, w_gate_up, b_gate_up, wd, bd, act_in, act_mid)

    # ------------------------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, capacity: int = 256) -> KVCache:
        return KVCache(self.network, batch_size, capacity, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                logits: str = "last", first_row: int = 0) -> torch.Tensor:
        """input_ids, positions [B, T] (position -1 = padding; a sequence's tokens contiguous, right-padded),
        run against cache rows [first_row, first_row + B).

        logits: "all" -> float32 [B, T, V]; "last" -> float32 [B, V] at each sequence's last valid token;
        "none" -> the final hidden states [B, T, H].
        """
        if input_ids.device != self.device:
            input_ids, positions = input_ids.to(self.device), positions.to(self.device)
        B, T = input_ids.shape
        valid = positions >= 0
        all_valid = bool(valid.all())
        plan = cache.begin(positions, first_row)
        if not all_valid:
            input_ids, positions = input_ids.clamp(min=0), positions.clamp(min=0)
        x = F.embedding(input_ids, self.embed)                    # [B, T, H]
        ropes = {key: self._rope(key, positions) for key in self.rope_tables}
        flat_valid = None if all_valid else valid.reshape(-1)
        for i, (attn_norm, attn, mlp_norm, mlp) in enumerate(self.layers):
            x = x + self._attention(rms_norm(x, attn_norm, self.eps[i][0]), attn, ropes[attn.spec.rope], cache,
                                    plan, i)
            h = rms_norm(x, mlp_norm, self.eps[i][1]).view(B * T, -1)
            if flat_valid is None:
                x = x + self._mlp_forward(h, mlp).view(B, T, -1)
            else:                                                  # padding tokens skip the MLP
                delta = torch.zeros_like(h)
                delta[flat_valid] = self._mlp_forward(h[flat_valid], mlp)
                x = x + delta.view(B, T, -1)
        if logits == "none":
            return x
        if logits == "last":
            if T == 1:
                x = x[:, 0]
            else:
                last = valid.sum(dim=1).clamp(min=1) - 1
                x = x[torch.arange(B, device=self.device), last]   # [B, H]
        x = rms_norm(x, self.final_norm, self.network.final_norm.eps)
        out = _lin(self.lm_head, x)
        return out if out.dtype == torch.float32 else out.float()

    def _rope(self, key, positions: torch.Tensor):
        """Full-width (cos, sin) [B, T, 1, D] for these positions, from a per-position table grown on demand
        (the same elementwise math as computing them from the positions directly)."""
        table = self._rope_cache.get(key)
        need = int(positions.max()) + 1
        if table is None or table[0].shape[0] < need:
            inv, conc = self.rope_tables[key]
            size = max(need, 2 * (0 if table is None else table[0].shape[0]), 256)
            cos, sin = rope_full_tables(*rope_cos_sin(torch.arange(size, device=self.device), inv, conc))
            table = (cos.to(self.dtype), sin.to(self.dtype))
            self._rope_cache[key] = table
        return table[0][positions].unsqueeze(2), table[1][positions].unsqueeze(2)

    # Decode against at most this many cached keys uses the explicit op (fewer kernel launches at small S);
    # longer key sets and prefill use the fused kernel (no [T, S] score matrix per head in memory).
    FUSED_MIN_KEYS = 128

    def _attention(self, h, w: _AttnWeights, rope, cache: KVCache, plan, layer: int):
        a = w.spec
        B, T, _ = h.shape
        qkv = _lin(w.qkv, h)                                      # merged q|k|v rows
        q_rows, kv_rows = a.num_q_heads * a.head_dim, a.num_kv_heads * a.head_dim
        # RoPE on q and k heads together ([B, T, Hq + Hkv, D]), v untouched.
        qk = apply_rope_full(qkv[..., :q_rows + kv_rows].view(B, T, a.num_q_heads + a.num_kv_heads, a.head_dim),
                             *rope)
        q = qk[:, :, :a.num_q_heads].transpose(1, 2)              # [B, Hq, T, D]
        k = qk[:, :, a.num_q_heads:]                              # [B, T, Hkv, D]
        v = qkv[..., q_rows + kv_rows:].view(B, T, a.num_kv_heads, a.head_dim)
        if w.kv_quant is not None:
            k, v = w.kv_quant(k, v)
        k_all, v_all = cache.update(layer, k, v)
        if T == 1 and k_all.shape[2] <= self.FUSED_MIN_KEYS:
            o = sink_attention(q, k_all, v_all, None, w.sinks, a.sm_scale, blocked=plan.blocked(layer))
        else:
            o = sink_attention_fused(q, k_all, v_all, plan.bias(layer), w.sinks, a.sm_scale)
        return _lin(w.out, o.transpose(1, 2).reshape(B, T, q_rows))

    def _mlp_forward(self, h, w: _MlpWeights):
        m = w.spec
        if isinstance(m, MoE):
            return moe(h, w.router.weight, w.router.bias, w.w_gate_up, w.b_gate_up, w.w_down, w.b_down,
                       m.top_k, m.swiglu_alpha, m.swiglu_limit, act_quant_in=w.act_in, act_quant_mid=w.act_mid)
        return dense_mlp(h, w.w_gate_up, w.b_gate_up, w.w_down, w.b_down, m.swiglu_alpha, m.swiglu_limit,
                         act_quant_in=w.act_in, act_quant_mid=w.act_mid)
