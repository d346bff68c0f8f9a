"""Per-op implementations for each target: `plugins.reference` (torch ops: sink attention, sliding window, YaRN,
clamped-SwiGLU MoE, quantized linears), the numerics the reference runtime and the oracles run."""
