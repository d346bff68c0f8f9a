"""Pure numerics for the quantized formats (MXFP4, NVFP4, FP8). Knows nothing of files or models."""
