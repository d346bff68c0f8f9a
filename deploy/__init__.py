"""Serving and deploying an engine: serve-engine (a real tritonserver on the engine's repository, bound to
127.0.0.1), the gRPC clients that speak the TensorRT-LLM backend's tensor names (gptoss-client), deploy-engine
(Dockerfiles, Compose, Kubernetes objects sized from the engine's plan) and test helpers."""
