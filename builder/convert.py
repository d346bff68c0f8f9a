"""Convert a checkpoint, calibrating first when the target stores activation or KV scales: the one place
that joins builder.calibrate (runs a model) and checkpoint.convert (writes files, takes the maxima as data)."""

from __future__ import annotations

from pathlib import Path

from checkpoint.calibration import Calibration
from checkpoint.convert import convert_checkpoint as _convert
from checkpoint.convert.quant_write import quant_format
from checkpoint.errors import CheckpointError


def calibrate_and_convert(src, dst, to: str, *, calibration: str | Path | Calibration | None = None,
                       calib_options: dict | None = None, progress: bool = True, **kw) -> Path:
    """checkpoint.convert.convert_checkpoint, with `calibration` also as texts: "default" (the built-in set)
    or a text file (one text per line), measured on `src` by builder.calibrate (calib_options: max_tokens,
    dtype, device; ignored without a calibration). Argument errors are raised before the (slow) calibration runs."""
    if isinstance(calibration, (str, Path)):
        quant_format(to, calibration)
        if kw.get("kv_cache") not in (None, "fp8"):
            raise CheckpointError(f"kv_cache={kw['kv_cache']!r} is not supported; fix: use None or 'fp8'")
        from builder.calibrate import calibrate
        calibration = calibrate(src, calibration, progress=progress, **(calib_options or {}))
    return _convert(src, dst, to, calibration=calibration, progress=progress, **kw)
