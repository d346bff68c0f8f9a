"""Engine building: plan a model on a target, calibrate, convert and quantize, write the engine directory
(checkpoint, network.json, options, Triton repository) with its manifest, atomically, through a build cache."""

from spec import __version__  # noqa: F401
