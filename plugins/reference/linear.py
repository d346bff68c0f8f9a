"""Linears that emulate an engine's numerics for each quant format: y = act_q(x) @ deq(W).T + b.

An engine GEMM in format F reads weights stored in F and (for W4A4/W8A8 formats) quantizes its activations on
the fly. The reference emulates that with dequantized weights (exact: every F value is representable in fp32)
and, where the format quantizes activations, a fake-quantize of x (quantize, then dequantize) before a float
matmul. The numerics are numerics's (bit-exact with ModelOpt / TensorRT-LLM's recipes, see there).

Formats (spec.registry.quant_formats names) and the canonical value each module's weight must be:
- "bf16":  the unquantized path: a torch.Tensor, used as the checkpoint holds it (cast to the runtime dtype).
- "mxfp4": W4A16: spec.canonical.MXFP4Weight, dequantized once; activations not quantized.
- "nvfp4": W4A4: numerics.nvfp4.NVFP4Tensor (weight, e4m3 per-16 scales, fp32 global scale) plus the
           calibrated activation `input_scale` (amax / (6 * 448)); activations are fake-quantized to NVFP4
           with that global scale and dynamic per-16 e4m3 block scales
           (numerics.nvfp4.fake_quantize_nvfp4_activations, TensorRT-LLM's cvt_warp_fp16_to_fp4).
- "fp8":   W8A8: numerics.fp8.FP8Tensor plus a static per-tensor activation `input_scale`.
Activation fake-quant runs through numpy on the CPU. The values come from the engine's checkpoint as
checkpoint.convert.load_canonical reads it: MXFP4Weight from HF MXFP4 / OpenAI checkpoints, NVFP4Tensor and
FP8Tensor with their `input_scale`s from hf-nvfp4 / hf-fp8 ones (spec.canonical names them). A new format
is one QUANT_IMPLS entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from numerics.mxfp4 import MXFP4Weight


class UnsupportedQuantError(NotImplementedError):
    pass


@dataclass
class QuantImpl:
    # canonical value (torch.Tensor | MXFP4Weight | ...) -> float weight; ValueError on a mismatched value
    dequantize_weight: Callable[[object, str], torch.Tensor]
    # (x, input_scale) -> fake-quantized x, applied before the GEMM; None for W*A16 formats
    quantize_activation: Callable[[torch.Tensor, float], torch.Tensor] | None = None


def _plain_weight(value, name: str) -> torch.Tensor:
    if isinstance(value, MXFP4Weight):
        raise ValueError(f"{name}: the network declares this module unquantized ('bf16') but the checkpoint holds "
                         f"a packed MXFP4 weight; declare it 'mxfp4' (network_from_config(..., quant='mxfp4'))")
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def _mxfp4_weight(value, name: str) -> torch.Tensor:
    if not isinstance(value, MXFP4Weight):
        raise ValueError(f"{name}: the network declares this module 'mxfp4' but the checkpoint holds an "
                         f"unquantized tensor; quantize it with numerics.mxfp4 first (the runtime never "
                         f"quantizes weights itself: that is a build step with a chosen scale rule)")
    return dequantize_mxfp4_torch(value)


# Rows dequantized per step: bounds the int64 index copies torch's table lookup needs (~50 MB for 20b rows).
_MXFP4_ROWS = 4096


def dequantize_mxfp4_torch(value: MXFP4Weight) -> torch.Tensor:
    """numerics.mxfp4.dequantize_mxfp4 in torch (multi-threaded; numpy's runs on one core): the same table
    lookup (FP4_PAIR_VALUES) and the same float32 products with E8M0_VALUES, each exact, so the result is
    bit-identical (tests/plugins/test_mxfp4_torch_dequant.py compares them on every byte value)."""
    from numerics.mxfp4 import E8M0_VALUES, FP4_PAIR_VALUES
    pairs, e8m0 = torch.from_numpy(FP4_PAIR_VALUES), torch.from_numpy(E8M0_VALUES)
    blocks = torch.from_numpy(np.ascontiguousarray(value.blocks))
    scales = torch.from_numpy(np.ascontiguousarray(value.scales))
    nb = scales.shape[-1]
    b2, s2 = blocks.reshape(-1, nb, 16), scales.reshape(-1, nb)
    out = torch.empty((s2.shape[0], nb, 32), dtype=torch.float32)
    for r in range(0, s2.shape[0], _MXFP4_ROWS):
        rows = slice(r, r + _MXFP4_ROWS)
        vals = pairs[b2[rows].long()].view(-1, nb, 32)             # [rows, nb, 16, 2] -> [rows, nb, 32]
        torch.mul(vals, e8m0[s2[rows].long()].unsqueeze(-1), out=out[rows])
    return out.view(tuple(scales.shape[:-1]) + (nb * 32,))


def _nvfp4_weight(value, name: str) -> torch.Tensor:
    from numerics.nvfp4 import NVFP4Tensor
    if not isinstance(value, NVFP4Tensor):
        raise ValueError(f"{name}: the network declares this module 'nvfp4' but the checkpoint holds "
                         f"{type(value).__name__}; expected numerics.nvfp4.NVFP4Tensor")
    return torch.from_numpy(np.ascontiguousarray(value.dequantize()))


def _fp8_weight(value, name: str) -> torch.Tensor:
    from numerics.fp8 import FP8Tensor
    if not isinstance(value, FP8Tensor):
        raise ValueError(f"{name}: the network declares this module 'fp8' but the checkpoint holds "
                         f"{type(value).__name__}; expected numerics.fp8.FP8Tensor")
    return torch.from_numpy(np.ascontiguousarray(value.dequantize()))


def nvfp4_fake_quant(x: torch.Tensor, input_scale: float) -> torch.Tensor:
    """W4A4 activations: NVFP4 with the calibrated global scale, dynamic per-16 e4m3 block scales."""
    from numerics.nvfp4 import fake_quantize_nvfp4_activations
    q = fake_quantize_nvfp4_activations(x.detach().float().cpu().numpy(), input_scale)
    return torch.from_numpy(q).to(device=x.device, dtype=x.dtype)


def fp8_fake_quant(x: torch.Tensor, input_scale: float) -> torch.Tensor:
    """W8A8 activations: e4m3 with a static per-tensor scale, saturating at 448 * scale."""
    from numerics.fp8 import dequantize_fp8, quantize_fp8_per_tensor
    data, s = quantize_fp8_per_tensor(x.detach().float().cpu().numpy(), input_scale)
    return torch.from_numpy(dequantize_fp8(data, s)).to(device=x.device, dtype=x.dtype)


QUANT_IMPLS: dict[str, QuantImpl] = {
    "bf16": QuantImpl(_plain_weight),
    "mxfp4": QuantImpl(_mxfp4_weight),
    "nvfp4": QuantImpl(_nvfp4_weight, nvfp4_fake_quant),
    "w4a16-nvfp4": QuantImpl(_nvfp4_weight),          # weight-only NVFP4: activations stay bf16
    "fp8": QuantImpl(_fp8_weight, fp8_fake_quant),
}

def quant_impl(quant: str) -> QuantImpl:
    if quant in QUANT_IMPLS:
        return QUANT_IMPLS[quant]
    raise UnsupportedQuantError(f"the reference runtime cannot execute quant format {quant!r}: no such format. "
                                f"Implemented: {', '.join(QUANT_IMPLS)}")


def dequantize(value, quant: str, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """A canonical value declared in `quant` -> a dense weight in dtype (the engine's weight, dequantized)."""
    return quant_impl(quant).dequantize_weight(value, name).to(device=device, dtype=dtype).contiguous()


def activation_quantizer(quant: str, input_scale, name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """x -> fake-quantized x for a format that quantizes activations (None for W*A16 formats)."""
    impl = quant_impl(quant)
    if impl.quantize_activation is None:
        return None
    if input_scale is None:
        raise UnsupportedQuantError(f"{name}: format {quant!r} quantizes activations and needs the calibrated "
                                    f"input_scale, which the checkpoint does not provide")
    scale = float(input_scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{name}: input_scale must be a finite positive number, got {scale}")
    fq = impl.quantize_activation
    return lambda x: fq(x, scale)


class PreparedLinear:
    """One linear, weights dequantized once: __call__(x) = act_q(x) @ W.T + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, quant: str = "bf16",
                 act_quant: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.weight = weight
        self.bias = bias
        self.quant = quant
        self.act_quant = act_quant

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.linear(x, self.weight, self.bias)


def prepare_linear(weight, bias, quant: str, name: str, dtype: torch.dtype, device=None,
                   input_scale=None) -> PreparedLinear:
    w = dequantize(weight, quant, name, dtype, device)
    b = None if bias is None else _plain_weight(bias, name + " bias").to(device=device, dtype=dtype)
    return PreparedLinear(w, b, quant, activation_quantizer(quant, input_scale, name))


def prepare_expert_weights(weight, quant: str, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Experts' [E, out, in] weight, dequantized (their activation quantizer: activation_quantizer)."""
    return dequantize(weight, quant, name, dtype, device)
