"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}} with the HTTP status."""

from __future__ import annotations


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param)


def model_not_found(name: str, served: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{name}` does not exist; this server serves `{served}` (GET /v1/models)",
                       "invalid_request_error", "model", "model_not_found")


def loading(detail: str = "") -> OpenAIError:
    return OpenAIError(503, "The model is still loading; retry shortly" + (f" ({detail})" if detail else ""),
                       "service_unavailable", None, "model_loading")


def unavailable(message: str) -> OpenAIError:
    return OpenAIError(503, message, "service_unavailable", None, "backend_unavailable")


def server_error(message: str, code: str | None = None) -> OpenAIError:
    return OpenAIError(500, message, "server_error", None, code)
