"""Per-op kernels: `plugins.reference` (torch reference ops, CPU or GPU) and the per-SM capability table."""
