"""Checkpoint conversion: name tables per format, quirk functions, canonical loading and writing.

Public API (other packages call only these):
    load_canonical(src) -> CanonicalCheckpoint   (.config, .format, .quant, .names(), .get(name), .tensors())
    convert_checkpoint(src, dst, to, force=False, progress=True, calibration=None) -> Path
        to: "hf", "hf-mxfp4", "openai", "hf-nvfp4", "hf-fp8"; calibration: None (weight-only) or the measured
        maxima (checkpoint.calibration.Calibration) for the activation scales of hf-nvfp4 (W4A4) and hf-fp8.
        builder.convert.convert_checkpoint also takes texts and runs the calibration first.
"""

from checkpoint.convert.load import CanonicalCheckpoint, load_canonical  # noqa: F401


def convert_checkpoint(src, dst, to: str, force: bool = False, progress: bool = True, calibration=None, **kw):
    from checkpoint.convert.convert import convert_checkpoint as _convert
    return _convert(src, dst, to, force=force, progress=progress, calibration=calibration, **kw)
