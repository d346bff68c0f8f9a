"""Checkpoints: safetensors (bounded header parse, mmap reads, streaming sharded writer), config.json for the HF and
OpenAI original gpt-oss formats, ModelOpt quant configs, conversion between formats (checkpoint.convert: name tables,
quirks, canonical loading and writing), the quantization policy, calibrated maxima as data, and atomic directory
installs. Knows files and formats; runs no model."""

from checkpoint.config_io import model_config_from_checkpoint  # noqa: F401
from checkpoint.errors import CheckpointError  # noqa: F401
from checkpoint.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorSpec  # noqa: F401
from checkpoint.store import ShardedWriter, TensorStore  # noqa: F401
