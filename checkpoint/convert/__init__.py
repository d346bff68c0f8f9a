"""Checkpoint conversion: name tables per format, quirk functions, canonical loading and writing.

Public API (other packages call only these):
    load_canonical(src) -> CanonicalCheckpoint   (.config, .format, .quant, .names(), .get(name), .tensors())
    convert_checkpoint(src, dst, to, force=False, progress=True, calibration=None) -> Path
        to: "hf", "hf-mxfp4", "openai", "hf-nvfp4", "hf-fp8"; calibration: None (weight-only) or the measured
        maxima (checkpoint.calibration.Calibration) for the activation scales of hf-nvfp4 (W4A4) and hf-fp8.
        builder.convert.calibrate_and_convert also takes texts and runs the calibration first.
"""

from checkpoint.convert.convert import convert_checkpoint  # noqa: F401
from checkpoint.convert.load import CanonicalCheckpoint, load_canonical  # noqa: F401
