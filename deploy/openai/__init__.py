"""An OpenAI-compatible HTTP endpoint (FastAPI) in front of the Triton server: /v1/models, /v1/chat/completions,
/v1/completions and Prometheus /metrics. It renders chats with openai-harmony, sends token ids to the
`tensorrt_llm` model over gRPC streams, and parses the generated ids back (Harmony channels, tool calls).
Started by `serve-engine ENGINE_DIR --openai-port P`."""
