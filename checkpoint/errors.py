"""The one error type checkpoint code raises for bad input (the CLI turns it into exit code 2)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint, its config or a conversion request is wrong. The message names the file, the tensor
    and the fix; callers show it as is."""
