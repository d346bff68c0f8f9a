"""The small functions behind the name tables: every place where formats differ by more than a name.

Read quirks turn source tensors into one canonical value; write quirks turn canonical values into one
target tensor (or a blocks/scales pair). Each takes the ModelConfig first.

`@rowwise` marks a quirk whose output rows [a:b] along dim 0 depend only on its inputs' rows [a:b]
(experts on E, embeddings on vocab). The converter then streams such tensors in pieces, which is what
keeps peak memory at one piece rather than one 4 GB expert tensor.

The quirks, and why they exist:
- HF splits attention into q/k/v projections; canonical (and OpenAI) keeps one merged q|k|v matrix.
- HF stores expert weights as [E, in, out] (x @ W), canonical is nn.Linear's [E, out, in].
- HF and OpenAI interleave gate and up along the output dim (gate = even, up = odd); canonical keeps
  them apart. Getting this wrong still runs, and talks nonsense.
- The dense MLP (tables.py: HF_DENSE_*) is stored like one HF expert: [in, out], gate/up interleaved.
- MXFP4 experts come as a _blocks/_scales (or .blocks/.scales) pair; canonical keeps them packed.
- ModelOpt NVFP4/FP8 checkpoints: see checkpoint/convert/quant_quirks.py.
"""

from __future__ import annotations

import numpy as np
import torch

from numerics.mxfp4 import MXFP4Weight
from spec.canonical import split_qkv
from numerics.mxfp4 import quantize_mxfp4

# The OCP MX scale rule: exp = floor(log2(amax)) - 2, values rounded half-to-even, saturating at 6.
PACK_RULE = "floor"
# Experts dequantized from MXFP4 into a float format land in bf16: every e2m1 x 2^k value is exact there.
DEQUANT_DTYPE = torch.bfloat16


def rowwise(fn):
    fn.rowwise = True
    return fn


def is_rowwise(fn) -> bool:
    return getattr(fn, "rowwise", False)


def makes_mxfp4(fn):
    fn.makes_mxfp4 = True
    fn.makes_quant = "mxfp4"
    return fn


def makes_quant(kind: str):
    """Marks a read quirk whose canonical value is quantized: kind "mxfp4" | "nvfp4" | "fp8"."""
    def mark(fn):
        fn.makes_quant = kind
        return fn
    return mark


def quantizes(codec: str):
    """Marks a write quirk that stores its inputs in `codec` ("nvfp4" | "fp8"): the converter first agrees
    on one scale for all its inputs (SharedScale, checkpoint/convert/quant_quirks.py) and passes it as scale=."""
    def mark(fn):
        fn.quantizes = codec
        return fn
    return mark


# -- helpers ------------------------------------------------------------------------------------------
def _interleave(a, b, dim: int):
    """a, b -> rows a0 b0 a1 b1 ... along dim (numpy or torch)."""
    if isinstance(a, np.ndarray):
        return np.stack([a, b], axis=dim + 1).reshape(a.shape[:dim] + (2 * a.shape[dim],) + a.shape[dim + 1:])
    return torch.stack([a, b], dim=dim + 1).reshape(*a.shape[:dim], 2 * a.shape[dim], *a.shape[dim + 1:])


def _t12(x: torch.Tensor) -> torch.Tensor:
    """x.transpose(1, 2).contiguous() for [E, a, b], one expert at a time: torch's 2-D transpose copy is
    about 4x faster than its 3-D strided one, and expert tensors are the bulk of every conversion."""
    out = torch.empty(x.shape[0], x.shape[2], x.shape[1], dtype=x.dtype)
    for e in range(x.shape[0]):
        out[e] = x[e].t()
    return out


def _packed(x) -> MXFP4Weight:
    if isinstance(x, MXFP4Weight):
        return x
    if not isinstance(x, torch.Tensor):                     # NVFP4/FP8 -> their exact float32 values
        x = torch.from_numpy(np.ascontiguousarray(x.dequantize()))
    blocks, scales = quantize_mxfp4(x, rule=PACK_RULE)     # takes bf16/fp32 torch tensors as they are
    return MXFP4Weight(blocks, scales)


def _float(x) -> torch.Tensor:
    """A canonical value as a float tensor: quantized ones (MXFP4Weight, NVFP4Tensor, FP8Tensor) are
    dequantized to DEQUANT_DTYPE (exact for MXFP4; NVFP4/FP8 values round to bf16's 8 bits)."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x.dequantize())).to(DEQUANT_DTYPE)


# -- read quirks: source tensors -> canonical value -------------------------------------------------
@rowwise
def same(c, x):
    return x


def merge_qkv(c, q, k, v):
    return torch.cat([q, k, v], dim=0)


@rowwise
def even_last(c, x):
    """Gate half of an interleaved tensor whose last dim is gate/up: HF gate_up_proj bias, OpenAI mlp1_bias."""
    return x[..., 0::2].contiguous()


@rowwise
def odd_last(c, x):
    return x[..., 1::2].contiguous()


@rowwise
def gate_from_hf(c, gate_up):
    """HF gate_up_proj [E, H, 2I] (x @ W, gate/up interleaved on the last dim) -> gate [E, I, H]."""
    return _t12(gate_up[..., 0::2].contiguous())


@rowwise
def up_from_hf(c, gate_up):
    return _t12(gate_up[..., 1::2].contiguous())


@rowwise
def down_from_hf(c, down):
    """HF down_proj [E, I, H] -> canonical [E, H, I]."""
    return _t12(down)


def dense_gate_from_hf(c, gate_up):
    """Dense gate_up_proj [H, 2I] (x @ W, gate/up interleaved on the last dim) -> gate [I, H]."""
    return gate_up[:, 0::2].t().contiguous()


def dense_up_from_hf(c, gate_up):
    return gate_up[:, 1::2].t().contiguous()


def dense_gate_bias(c, gate_up_bias):
    """Dense gate_up_proj_bias [2I] (interleaved) -> gate bias [I]. Not rowwise: output row i is input row 2i."""
    return gate_up_bias[0::2].contiguous()


def dense_up_bias(c, gate_up_bias):
    return gate_up_bias[1::2].contiguous()


def dense_down_from_hf(c, down):
    """Dense down_proj [I, H] -> canonical [H, I]."""
    return down.t().contiguous()


@rowwise
@makes_mxfp4
def mxfp4_pair(c, blocks, scales):
    """Packed weight whose rows are already canonical (down: [E, H, I/32, 16])."""
    return MXFP4Weight(blocks.numpy(), scales.numpy())


@rowwise
@makes_mxfp4
def mxfp4_gate(c, blocks, scales):
    """Gate rows of packed gate/up ([E, 2I, H/32, 16], rows interleaved): the even rows. Blocks run along
    the input dim, so taking whole rows is exact and needs no repacking."""
    return MXFP4Weight(np.ascontiguousarray(blocks.numpy()[:, 0::2]), np.ascontiguousarray(scales.numpy()[:, 0::2]))


@rowwise
@makes_mxfp4
def mxfp4_up(c, blocks, scales):
    return MXFP4Weight(np.ascontiguousarray(blocks.numpy()[:, 1::2]), np.ascontiguousarray(scales.numpy()[:, 1::2]))


# -- write quirks: canonical values -> target tensor(s) ---------------------------------------------
@rowwise
def plain(c, x):
    """A linear weight into a float format: as is, or dequantized if the source quantized it."""
    return _float(x)


def q_of_qkv(c, qkv):
    return split_qkv(c, _float(qkv))[0].contiguous()


def k_of_qkv(c, qkv):
    return split_qkv(c, _float(qkv))[1].contiguous()


def v_of_qkv(c, qkv):
    return split_qkv(c, _float(qkv))[2].contiguous()


@rowwise
def interleave_last(c, gate, up):
    """gate, up biases [E, I] -> interleaved [E, 2I]."""
    return _interleave(gate, up, dim=gate.dim() - 1)


@rowwise
def hf_gate_up(c, gate, up):
    """gate, up [E, I, H] -> HF gate_up_proj [E, H, 2I] (interleaved on the last dim)."""
    gate, up = _float(gate), _float(up)
    out = torch.empty(gate.shape[0], gate.shape[2], 2 * gate.shape[1], dtype=gate.dtype)
    for e in range(gate.shape[0]):      # per expert: see _t12
        out[e] = _interleave(gate[e].t().contiguous(), up[e].t().contiguous(), dim=1)
    return out


@rowwise
def hf_down(c, down):
    return _t12(_float(down))


def hf_dense_gate_up(c, gate, up):
    """gate, up [I, H] -> dense gate_up_proj [H, 2I] (interleaved on the last dim, as one HF expert)."""
    return _interleave(_float(gate).t().contiguous(), _float(up).t().contiguous(), dim=1)


def hf_dense_gate_up_bias(c, gate, up):
    """gate, up biases [I] -> [2I] interleaved. Not rowwise (see dense_gate_bias)."""
    return _interleave(gate, up, dim=0)


def hf_dense_down(c, down):
    return _float(down).t().contiguous()


@rowwise
def packed_pair(c, w):
    """-> (blocks, scales) of a weight whose canonical rows are the stored rows (down)."""
    p = _packed(w)
    return torch.from_numpy(p.blocks), torch.from_numpy(p.scales)


@rowwise
def packed_gate_up(c, gate, up):
    """gate, up -> (blocks [E, 2I, H/32, 16], scales [E, 2I, H/32]) with rows interleaved as gpt-oss ships."""
    g, u = _packed(gate), _packed(up)
    return (torch.from_numpy(np.ascontiguousarray(_interleave(g.blocks, u.blocks, dim=1))),
            torch.from_numpy(np.ascontiguousarray(_interleave(g.scales, u.scales, dim=1))))
