"""Linears that emulate an engine's numerics for each quant format: y = act_q(x) @ deq(W).T + b.

An engine GEMM in format F reads weights stored in F and (for W4A4/W8A8 formats) quantizes its activations on
the fly. The reference emulates that with dequantized weights (exact: every F value is representable in fp32)
and, where the format quantizes activations, a fake-quantize of x before a float matmul.

Implemented formats (builder.registry.quant_formats names):
- "bf16":  the unquantized path. The weight is used as the checkpoint holds it (cast to the runtime dtype).
- "mxfp4": W4A16. The weight arrives packed (builder.canonical.MXFP4Weight) and is dequantized once;
           activations are not quantized.
Not implemented yet, each refused with a clear error (the extension point is QUANT_IMPLS below):
- "nvfp4" (W4A4): needs the packed weight with its e4m3 per-16 scales and fp32 global scale, and the
  calibrated activation `input_scale`; activations are fake-quantized to NVFP4 with that global scale and
  dynamic per-16 e4m3 block scales. Waits on builder/quant/nvfp4.py and canonical names for those scales.
- "fp8" (W8A8): waits on builder/quant/fp8.py and canonical names for weight/input scales.
- "w4a8-mxfp4-mxfp8": MXFP4 weights (done) with MXFP8 activation fake-quant (not written).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from builder.canonical import MXFP4Weight


class UnsupportedQuantError(NotImplementedError):
    pass


@dataclass
class QuantImpl:
    # canonical value (torch.Tensor | MXFP4Weight) -> float weight; raises ValueError on a mismatched value
    dequantize_weight: Callable[[object, str], torch.Tensor]
    # activation fake-quant applied before the GEMM, or None (W*A16 formats)
    quantize_activation: Callable[[torch.Tensor], torch.Tensor] | None = None


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
                         f"unquantized tensor; quantize it with builder.quant.mxfp4 first (the runtime never "
                         f"quantizes weights itself: that is a build step with a chosen scale rule)")
    return torch.from_numpy(np.ascontiguousarray(value.dequantize()))


QUANT_IMPLS: dict[str, QuantImpl] = {
    "bf16": QuantImpl(_plain_weight),
    "mxfp4": QuantImpl(_mxfp4_weight),
}

_MISSING = {
    "nvfp4": "NVFP4 W4A4 needs builder/quant/nvfp4.py (weight dequant, activation fake-quant with a calibrated "
             "global scale and dynamic per-16 e4m3 block scales) and canonical names for weight_scale, "
             "weight_scale_2 and input_scale",
    "fp8": "FP8 W8A8 needs builder/quant/fp8.py and canonical names for its weight and input scales",
    "w4a8-mxfp4-mxfp8": "MXFP4 weights with MXFP8 activations: the MXFP8 activation fake-quant is not written",
}


def quant_impl(quant: str) -> QuantImpl:
    if quant in QUANT_IMPLS:
        return QUANT_IMPLS[quant]
    why = _MISSING.get(quant, "no such format")
    raise UnsupportedQuantError(f"the reference runtime cannot execute quant format {quant!r} yet: {why}. "
                                f"Implemented: {', '.join(QUANT_IMPLS)}")


def dequantize(value, quant: str, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """A canonical value declared in `quant` -> a dense weight in dtype (the engine's weight, dequantized)."""
    return quant_impl(quant).dequantize_weight(value, name).to(device=device, dtype=dtype).contiguous()


class PreparedLinear:
    """One linear, weights dequantized once: __call__(x) = act_q(x) @ W.T + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, quant: str = "bf16"):
        self.weight = weight
        self.bias = bias
        self.quant = quant
        self.act_quant = quant_impl(quant).quantize_activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.linear(x, self.weight, self.bias)


def prepare_linear(weight, bias, quant: str, name: str, dtype: torch.dtype, device=None) -> PreparedLinear:
    w = dequantize(weight, quant, name, dtype, device)
    b = None if bias is None else _plain_weight(bias, name + " bias").to(device=device, dtype=dtype)
    return PreparedLinear(w, b, quant)


def prepare_expert_weights(weight, quant: str, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Experts' [E, out, in] weight, dequantized. W4A4 expert activations are not supported yet (see above)."""
    impl = quant_impl(quant)
    if impl.quantize_activation is not None:
        raise UnsupportedQuantError(f"{name}: activation-quantized experts ({quant!r}) are not implemented")
    return dequantize(weight, quant, name, dtype, device)
