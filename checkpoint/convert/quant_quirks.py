"""Quirks of ModelOpt-style NVFP4 and FP8 HF checkpoints: what nvidia-modelopt 0.47's export_hf_checkpoint
writes for transformers' GptOssForCausalLM, and what TensorRT-LLM (NVFP4) and vLLM-style loaders (FP8) read.

Layouts (E experts, H hidden, I intermediate). HF keeps expert weights as [E, in, out] with gate/up
interleaved on `out`; ModelOpt quantizes NVFP4 experts on the [E, out, in] transpose (blocks of 16 along
`in`) and transposes the results back:
  NVFP4 experts  gate_up_proj uint8 [E, H/2, 2I], gate_up_proj_weight_scale float8_e4m3fn [E, H/16, 2I],
                 gate_up_proj_weight_scale_2 float32 [] (one per projection, all experts and gate+up),
                 down_proj uint8 [E, I/2, H], down_proj_weight_scale [E, I/16, H], down_proj_weight_scale_2 [].
  FP8 experts    gate_up_proj float8_e4m3fn [E, H, 2I] (HF's own layout), gate_up_proj_weight_scale float32 [];
                 down_proj [E, I, H], down_proj_weight_scale [].
  FP8 linears    q/k/v/o_proj.weight float8_e4m3fn [out, in], .weight_scale float32 [].
  FP8 dense MLP  (the dense variant, our layout: one FP8 expert without the expert dim) gate_up_proj
                 float8_e4m3fn [H, 2I] interleaved, gate_up_proj_weight_scale []; down_proj [I, H], down_proj_weight_scale [].
  W4A4 / W8A8    <weight>_input_scale (experts) or <proj>.input_scale (linears), float32 [].
  FP8 KV cache   self_attn.k_proj.k_scale, self_attn.v_proj.v_scale, float32 [] (amax / 448).

Canonical values: NVFP4Tensor / FP8Tensor in nn.Linear's [.., out, in]; scales are float32 0-d tensors.

Scale sharing: a write quirk marked @quantizes gets `scale=`, a SharedScale the converter agreed on over
all of its inputs before writing a byte (all experts, gate and up together), so a projection streamed
in row pieces still has one global scale. Inputs already in the target codec with that scale are written
as they are (bit-exact round trips); MXFP4 experts become NVFP4 exactly (numerics.transcode).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch

from numerics.mxfp4 import MXFP4Weight
from spec.canonical import split_qkv
from checkpoint.convert.quirks import _interleave, _t12, hf_gate_up, makes_quant, quantizes, rowwise
from numerics.fp8 import FP8Tensor, dequantize_fp8, fp8_scale, quantize_fp8
from numerics.nvfp4 import NVFP4Tensor, nvfp4_global_scale, quantize_nvfp4
from numerics.transcode import mxfp4_kmax, mxfp4_to_nvfp4_lossless

E4M3 = ml_dtypes.float8_e4m3fn
F8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class SharedScale:
    codec: str                 # "nvfp4" | "fp8"
    scale: np.float32          # NVFP4 global scale (weight_scale_2) or FP8 per-tensor scale (weight_scale)
    k_max: int | None = None   # MXFP4 sources: transcode exactly under the global scale 2**(k_max - 8)


# -- agreeing on one scale ------------------------------------------------------------------------------
def value_scale(v) -> np.float32 | None:
    """The per-tensor scale a quantized canonical value already has (None for other kinds)."""
    if isinstance(v, NVFP4Tensor):
        return np.float32(v.global_scale)
    if isinstance(v, FP8Tensor):
        return np.float32(v.scale)
    return None


def value_amax(v) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.abs().max()) if v.numel() else 0.0
    x = v.dequantize()
    return float(np.abs(x).max()) if x.size else 0.0


def scale_from_amax(codec: str, amax: float) -> SharedScale:
    return SharedScale(codec, nvfp4_global_scale(amax) if codec == "nvfp4" else fp8_scale(amax))


def mxfp4_shared(k_max: int) -> SharedScale:
    return SharedScale("nvfp4", np.float32(np.ldexp(np.float32(1.0), k_max - 8)), k_max=k_max)


def mxfp4_piece_kmax(v: MXFP4Weight) -> int | None:
    s = v.scales
    return mxfp4_kmax(s) if (s > 0).any() else None


# -- values in the target codec ----------------------------------------------------------------------
def _as_float(v):
    return v if isinstance(v, torch.Tensor) else v.dequantize()


def to_nvfp4(v, shared: SharedScale) -> NVFP4Tensor:
    if isinstance(v, NVFP4Tensor) and np.float32(v.global_scale) == shared.scale:
        return v
    if isinstance(v, MXFP4Weight) and shared.k_max is not None:
        # Exact where e4m3 reaches (k_max - k_j <= 17); other blocks are requantized as ModelOpt does.
        return mxfp4_to_nvfp4_lossless(v.blocks, v.scales, k_max=shared.k_max, allow_lossy=True)
    return quantize_nvfp4(_as_float(v), shared.scale)


def to_fp8(v, shared: SharedScale) -> FP8Tensor:
    if isinstance(v, FP8Tensor) and np.float32(v.scale) == shared.scale:
        return v
    return quantize_fp8(_as_float(v), shared.scale)


def _u8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).view(np.uint8))


def _f32(s) -> torch.Tensor:
    return torch.tensor(float(s), dtype=torch.float32)


def _scalar(t: torch.Tensor) -> np.float32:
    return np.float32(t.float().reshape(()).item())


def _e4m3(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.uint8).numpy().view(E4M3)


# -- read quirks: ModelOpt tensors -> canonical values ----------------------------------------------
def _nvfp4_from_hf(packed: torch.Tensor, scale: torch.Tensor, g: torch.Tensor, sel) -> NVFP4Tensor:
    """packed [E, in/2, out'] + scales [E, in/16, out'] (out' columns `sel`) -> NVFP4Tensor [E, out, in]."""
    p = _t12(packed[..., sel]).numpy()                                  # [E, out, in/2]
    s = _t12(scale.view(torch.uint8)[..., sel]).numpy().view(E4M3)      # [E, out, in/16]
    return NVFP4Tensor(p, s, _scalar(g), (p.shape[0], p.shape[1], 2 * p.shape[2]))


@rowwise
@makes_quant("nvfp4")
def nvfp4_gate_from_hf(c, packed, scale, g):
    return _nvfp4_from_hf(packed, scale, g, slice(0, None, 2))


@rowwise
@makes_quant("nvfp4")
def nvfp4_up_from_hf(c, packed, scale, g):
    return _nvfp4_from_hf(packed, scale, g, slice(1, None, 2))


@rowwise
@makes_quant("nvfp4")
def nvfp4_down_from_hf(c, packed, scale, g):
    return _nvfp4_from_hf(packed, scale, g, slice(None))


def _fp8_expert(w: torch.Tensor, s: torch.Tensor, sel) -> FP8Tensor:
    return FP8Tensor(_t12(w.view(torch.uint8)[..., sel]).numpy().view(E4M3), _scalar(s))


@rowwise
@makes_quant("fp8")
def fp8_gate_from_hf(c, gate_up, s):
    return _fp8_expert(gate_up, s, slice(0, None, 2))


@rowwise
@makes_quant("fp8")
def fp8_up_from_hf(c, gate_up, s):
    return _fp8_expert(gate_up, s, slice(1, None, 2))


@rowwise
@makes_quant("fp8")
def fp8_down_from_hf(c, down, s):
    return _fp8_expert(down, s, slice(None))


@makes_quant("fp8")
def fp8_dense_gate_from_hf(c, gate_up, s):
    """Dense FP8 gate_up_proj [H, 2I] (interleaved) -> gate FP8Tensor [I, H]. Not rowwise (a transpose)."""
    return FP8Tensor(np.ascontiguousarray(_e4m3(gate_up)[:, 0::2].T), _scalar(s))


@makes_quant("fp8")
def fp8_dense_up_from_hf(c, gate_up, s):
    return FP8Tensor(np.ascontiguousarray(_e4m3(gate_up)[:, 1::2].T), _scalar(s))


@makes_quant("fp8")
def fp8_dense_down_from_hf(c, down, s):
    return FP8Tensor(np.ascontiguousarray(_e4m3(down).T), _scalar(s))


@rowwise
@makes_quant("fp8")
def fp8_linear(c, w, s):
    return FP8Tensor(_e4m3(w).copy(), _scalar(s))


@makes_quant("fp8")
def fp8_merge_qkv(c, q, k, v, sq, sk, sv):
    """q/k/v -> one FP8 qkv. ModelOpt writes each projection with its own weight_scale; the fused GEMM
    needs one, so unequal scales are requantized to the largest (as TensorRT-LLM and vLLM do on load)."""
    parts = [_e4m3(t) for t in (q, k, v)]
    scales = [_scalar(s) for s in (sq, sk, sv)]
    if scales[0] == scales[1] == scales[2]:
        return FP8Tensor(np.concatenate(parts, axis=0), scales[0])
    values = np.concatenate([dequantize_fp8(p, s) for p, s in zip(parts, scales)], axis=0)
    return quantize_fp8(values, max(scales))


def scale(c, x):
    """A stored scalar scale -> the canonical float32 0-d tensor."""
    return x.float().reshape(()).clone()


def max_scale(c, *xs):
    """Several scalars that must be one (q/k/v input scales; gate and up): their max, as loaders do."""
    return torch.stack([x.float().reshape(()) for x in xs]).max()


# -- write quirks: canonical values -> ModelOpt tensors ---------------------------------------------
@rowwise
@quantizes("nvfp4")
def hf_nvfp4_gate_up(c, gate, up, *, scale: SharedScale):
    """gate, up [E, I, H] -> (gate_up_proj [E, H/2, 2I], _weight_scale [E, H/16, 2I], _weight_scale_2 [])."""
    g, u = to_nvfp4(gate, scale), to_nvfp4(up, scale)
    packed = _interleave(g.packed, u.packed, dim=1)                                    # [E, 2I, H/2]
    block = _interleave(g.block_scale.view(np.uint8), u.block_scale.view(np.uint8), dim=1)
    return _t12(_u8(packed)), _t12(_u8(block)).view(F8), _f32(g.global_scale)


@rowwise
@quantizes("nvfp4")
def hf_nvfp4_down(c, down, *, scale: SharedScale):
    d = to_nvfp4(down, scale)
    return _t12(_u8(d.packed)), _t12(_u8(d.block_scale)).view(F8), _f32(d.global_scale)


@rowwise
@quantizes("fp8")
def hf_fp8_gate_up(c, gate, up, *, scale: SharedScale):
    """gate, up [E, I, H] -> (gate_up_proj float8 [E, H, 2I] interleaved, _weight_scale [])."""
    g, u = to_fp8(gate, scale), to_fp8(up, scale)
    return hf_gate_up(c, _u8(g.data), _u8(u.data)).view(F8), _f32(g.scale)


@rowwise
@quantizes("fp8")
def hf_fp8_down(c, down, *, scale: SharedScale):
    d = to_fp8(down, scale)
    return _t12(_u8(d.data)).view(F8), _f32(d.scale)


@quantizes("fp8")
def hf_fp8_dense_gate_up(c, gate, up, *, scale: SharedScale):
    """Dense gate, up [I, H] -> (gate_up_proj float8 [H, 2I] interleaved, _weight_scale [])."""
    g, u = to_fp8(gate, scale), to_fp8(up, scale)
    return _interleave(_u8(g.data).t(), _u8(u.data).t(), dim=1).contiguous().view(F8), _f32(g.scale)


@quantizes("fp8")
def hf_fp8_dense_down(c, down, *, scale: SharedScale):
    d = to_fp8(down, scale)
    return _u8(d.data).t().contiguous().view(F8), _f32(d.scale)


def _fp8_qkv_part(c, qkv, scale: SharedScale, i: int):
    q = to_fp8(qkv, scale)
    return split_qkv(c, _u8(q.data))[i].contiguous().view(F8), _f32(q.scale)


@quantizes("fp8")
def fp8_q_of_qkv(c, qkv, *, scale: SharedScale):
    return _fp8_qkv_part(c, qkv, scale, 0)


@quantizes("fp8")
def fp8_k_of_qkv(c, qkv, *, scale: SharedScale):
    return _fp8_qkv_part(c, qkv, scale, 1)


@quantizes("fp8")
def fp8_v_of_qkv(c, qkv, *, scale: SharedScale):
    return _fp8_qkv_part(c, qkv, scale, 2)


@rowwise
@quantizes("fp8")
def fp8_weight(c, w, *, scale: SharedScale):
    q = to_fp8(w, scale)
    return _u8(q.data).view(F8), _f32(q.scale)
