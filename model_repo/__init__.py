"""Triton model repository generator (the Triton issue)."""
