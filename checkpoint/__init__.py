"""Checkpoint files: safetensors (bounded header parse, mmap reads, streaming sharded writer) and
config.json for the HF and OpenAI original gpt-oss formats. Knows files, not name mappings
(those live in checkpoint.convert)."""

from checkpoint.config_io import model_config_from_checkpoint  # noqa: F401
from checkpoint.errors import CheckpointError  # noqa: F401
from checkpoint.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorSpec  # noqa: F401
from checkpoint.store import ShardedWriter, TensorStore  # noqa: F401
