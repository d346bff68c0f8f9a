"""Serving and gRPC clients (the Triton issue)."""
