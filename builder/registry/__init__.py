"""Declared facts: models, GPUs and quant formats. Imports nothing heavy; only it holds such numbers."""

from builder.registry.models import MODELS, ModelConfig, get_model  # noqa: F401
