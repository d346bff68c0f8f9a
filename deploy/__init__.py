"""Serving an engine: serve-engine (a real tritonserver on the engine's repository, bound to 127.0.0.1), the
gRPC clients that speak the TensorRT-LLM backend's tensor names (gptoss-client), and test helpers."""
