"""Calibrated activation and KV maxima, as data: what builder.calibrate measures by running a model and what
a quantized checkpoint's static scales are computed from (checkpoint.quant_policy turns an amax into a scale)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from checkpoint.errors import CheckpointError


class CalibrationError(CheckpointError):
    pass


@dataclass
class Calibration:
    amax: dict[str, float] = field(default_factory=dict)      # '<module>.input_scale' -> input amax
    kv_amax: dict[str, float] = field(default_factory=dict)   # '<qkv module>.k_scale' / '.v_scale' -> amax
    texts: int = 0
    tokens: int = 0

    def record(self, store: dict, name: str, x: torch.Tensor) -> None:
        if x.numel():
            v = float(x.detach().abs().amax())
            if v != v or v in (float("inf"), float("-inf")):
                raise CalibrationError(f"calibration: {name} saw a non-finite activation; the model diverges on "
                                       f"the calibration text (or its weights are broken)")
            store[name] = max(store.get(name, 0.0), v)
