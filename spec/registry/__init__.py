"""Declared facts: models, GPUs and quant formats. Imports nothing heavy; only it holds such numbers."""

from spec.registry.models import MODELS, ModelConfig, get_model  # noqa: F401
