"""Triton glue shared by the Python-backend models. Imported only inside Triton's Python-backend stub."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repo.requests import INVALID_ARG_PREFIX, RequestError


def model_params(args: dict) -> tuple[dict, dict]:
    """-> (model_config dict, {parameter key: string value})."""
    cfg = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    return cfg, params


def resolve_engine_dir(args: dict, value: str) -> Path:
    """engine_dir as written in config.pbtxt: absolute, or relative to the model repository root."""
    p = Path(value)
    if not p.is_absolute():
        repo_root = Path(args["model_repository"]).resolve().parent
        real = (repo_root / p).resolve()
        # Served through a plain-named link (deploy.server does that for paths with spaces or non-ASCII, which
        # this process may not be able to encode): keep the path through the link when it is the same folder.
        lexical = Path(os.path.normpath(Path(args["model_repository"]).parent / p))
        return lexical if str(lexical).isascii() and lexical.resolve() == real else real
    return p


def get(request, name: str):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def invalid(message: str) -> "pb_utils.TritonError":
    if not message.startswith(INVALID_ARG_PREFIX):
        message = INVALID_ARG_PREFIX + message
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


def internal(message: str) -> "pb_utils.TritonError":
    return pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)


def error_of(exc: BaseException) -> "pb_utils.TritonError":
    if isinstance(exc, RequestError):
        return invalid(str(exc))
    return internal(f"{type(exc).__name__}: {exc}")


def bytes_tensor(name: str, values, batch: bool = True) -> "pb_utils.Tensor":
    arr = np.array([v.encode("utf-8") if isinstance(v, str) else v for v in values], dtype=np.object_)
    return pb_utils.Tensor(name, arr.reshape(1, -1) if batch else arr)


def int32_tensor(name: str, values, shape) -> "pb_utils.Tensor":
    return pb_utils.Tensor(name, np.asarray(values, dtype=np.int32).reshape(shape))


def log_info(msg: str) -> None:
    pb_utils.Logger.log_info(msg)


def log_warn(msg: str) -> None:
    pb_utils.Logger.log_warn(msg)


def log_error(msg: str) -> None:
    pb_utils.Logger.log_error(msg)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
