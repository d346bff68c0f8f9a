"""gpt-oss build pipeline: registries, planner, checkpoint conversion, quantization, engine building."""

__version__ = "0.1.0"
