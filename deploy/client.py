"""A Python client for the served models, over tritonclient gRPC.

    from deploy.client import LLMClient
    with LLMClient("127.0.0.1:8001") as c:
        for chunk in c.stream("Tell me a story", max_tokens=64, reasoning_effort="low"):
            print(chunk.text, end="", flush=True)
        r = c.generate("Tell me a story", max_tokens=64)      # r.text, r.analysis, r.finish_reason, r.num_output_tokens
        r = c.generate("Once upon", 8, raw=True, return_log_probs=True, return_context_logits=True)
        # r.output_ids (generated ids), r.output_log_probs (their logprobs), r.context_logits (float32 [prompt, vocab])

Every call goes through the gRPC stream API (the models are decoupled, and TensorRT-LLM clients do the same):
stream=False asks for one final response. Errors:
- InvalidRequestError: the server refused the request (bad text, max_tokens, sampling values, dtypes, shapes...);
  Triton's stream API carries only a message, so this is recognised from it (our models prefix
  "invalid argument: "; Triton's own input checks have their known phrasings);
- ServerUnavailableError: the server could not be reached (gRPC UNAVAILABLE), after `retries` attempts with
  backoff; a request is retried only while no part of its answer has arrived;
- RequestTimeoutError: no answer within `timeout_s` (the request is cancelled on the server);
- ClientError: anything else the server reported.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

DEFAULT_MODEL = "tensorrt_llm_bls"
INVALID_ARG_PREFIX = "invalid argument: "
# Phrasings of Triton's own request checks (wrong dtype, shape, missing / unknown inputs).
_TRITON_INVALID = ("data-type is", "unexpected shape", "expected ", "unexpected inference input",
                   "missing required", "has no shape", "inference request for unknown model",
                   "unexpected datatype", "input byte size mismatch", "model expected")


class ClientError(RuntimeError):
    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class InvalidRequestError(ClientError):
    pass


class ServerUnavailableError(ClientError):
    pass


class RequestTimeoutError(ClientError):
    pass


@dataclass
class Chunk:
    text: str                      # new final-channel text
    analysis: str = ""             # new reasoning (analysis / commentary channel) text
    final: bool = False            # the last chunk of the answer
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    output_ids: list | None = None             # generated token ids of this chunk
    output_log_probs: list | None = None       # their logprobs (return_log_probs)
    context_logits: np.ndarray | None = None   # float32 [prompt_len, vocab] (return_context_logits; first chunk)


@dataclass
class Result:
    text: str
    analysis: str = ""
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    chunks: int = 0
    time_to_first_chunk_s: float | None = None
    total_s: float = 0.0
    extra: dict = field(default_factory=dict)
    output_ids: list | None = None
    output_log_probs: list | None = None
    context_logits: np.ndarray | None = None


def classify(message: str, status: str | None = None) -> ClientError:
    msg = message or ""
    if status and "UNAVAILABLE" in status:
        return ServerUnavailableError(msg, status)
    if status and "DEADLINE_EXCEEDED" in status:
        return RequestTimeoutError(msg, status)
    if status and "INVALID_ARGUMENT" in status:
        return InvalidRequestError(msg, status)
    body = msg.split("ensemble 'ensemble', ", 1)[-1]
    if INVALID_ARG_PREFIX in body or any(p in body for p in _TRITON_INVALID):
        return InvalidRequestError(msg, status or "INVALID_ARGUMENT")
    if "failed to connect" in msg.lower() or "connection refused" in msg.lower() or "unavailable" in msg.lower():
        return ServerUnavailableError(msg, status)
    return ClientError(msg, status)


def _bytes_array(values) -> np.ndarray:
    return np.array([[v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]], dtype=np.object_)


def build_inputs(prompt: str | bytes, max_tokens: int, *, stream: bool, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
                 stop_words: Sequence[str] | None = None, end_id: int | None = None,
                 reasoning_effort: str | None = None, system_prompt: str | None = None,
                 history: Sequence[dict] | None = None, raw: bool = False, return_log_probs: bool = False,
                 return_context_logits: bool = False, extra: dict | None = None):
    """tritonclient InferInputs with TensorRT-LLM's tensor names, batch dim 1. `extra`: {name: numpy array}."""
    arrays: dict[str, np.ndarray] = {
        "text_input": _bytes_array([prompt]),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "stream": np.array([[stream]], dtype=np.bool_),
    }
    if temperature is not None:
        arrays["temperature"] = np.array([[temperature]], dtype=np.float32)
    if top_p is not None:
        arrays["top_p"] = np.array([[top_p]], dtype=np.float32)
    if top_k is not None:
        arrays["top_k"] = np.array([[top_k]], dtype=np.int32)
    if seed is not None:
        arrays["seed"] = np.array([[seed]], dtype=np.uint64)
    if stop_words:
        arrays["stop_words"] = _bytes_array(stop_words)
    if end_id is not None:
        arrays["end_id"] = np.array([[end_id]], dtype=np.int32)
    if reasoning_effort is not None:
        arrays["reasoning_effort"] = _bytes_array([reasoning_effort])
    if system_prompt is not None:
        arrays["system_prompt"] = _bytes_array([system_prompt])
    if history:
        arrays["chat_history"] = _bytes_array([json.dumps(list(history))])
    if raw:
        arrays["raw_prompt"] = np.array([[True]], dtype=np.bool_)
    if return_log_probs:
        arrays["return_log_probs"] = np.array([[True]], dtype=np.bool_)
    if return_context_logits:
        arrays["return_context_logits"] = np.array([[True]], dtype=np.bool_)
    arrays.update(extra or {})
    return infer_inputs(arrays)


def infer_inputs(arrays: dict) -> list:
    """numpy arrays by tensor name -> tritonclient gRPC InferInputs (object arrays travel as BYTES)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype
    inputs = []
    for name, arr in arrays.items():
        dt = "BYTES" if arr.dtype == np.object_ else np_to_triton_dtype(arr.dtype)
        i = grpcclient.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    return inputs


def _array(result, name):
    try:
        return result.as_numpy(name)
    except Exception:  # noqa: BLE001
        return None


def _first(result, name):
    try:
        arr = result.as_numpy(name)
    except Exception:  # noqa: BLE001
        return None
    if arr is None or arr.size == 0:
        return None
    v = arr.reshape(-1)[0]
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v.item()


class LLMClient:
    def __init__(self, url: str = "127.0.0.1:8001", model: str = DEFAULT_MODEL, *, timeout_s: float = 120.0,
                 retries: int = 3, retry_backoff_s: float = 0.5, verbose: bool = False):
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.retries = max(0, int(retries))
        self.retry_backoff_s = retry_backoff_s
        self.verbose = verbose

    # -- health ------------------------------------------------------------------------------------------
    def _client(self):
        import tritonclient.grpc as grpcclient
        return grpcclient.InferenceServerClient(self.url, verbose=self.verbose)

    def is_ready(self) -> bool:
        try:
            c = self._client()
            try:
                return bool(c.is_server_ready(client_timeout=5)) and bool(c.is_model_ready(self.model,
                                                                                          client_timeout=5))
            finally:
                c.close()
        except Exception:  # noqa: BLE001
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_ready():
                return
            time.sleep(0.2)
        raise ServerUnavailableError(f"{self.url}: model {self.model!r} not ready after {timeout_s:.0f} s")

    # -- generation ----------------------------------------------------------------------------------------
    def stream(self, prompt: str | bytes, max_tokens: int = 128, *, stream: bool = True,
               timeout_s: float | None = None, **kw) -> Iterator[Chunk]:
        """Chunks as they arrive (stream=True: one per generated token). Closing the iterator early cancels the
        request on the server."""
        attempt = 0
        while True:
            got_any = False
            try:
                for chunk in self._stream_once(prompt, max_tokens, stream, timeout_s, kw):
                    got_any = True
                    yield chunk
                return
            except ServerUnavailableError:
                if got_any or attempt >= self.retries:
                    raise
                time.sleep(self.retry_backoff_s * (2 ** attempt))
                attempt += 1

    def _stream_once(self, prompt, max_tokens, stream, timeout_s, kw) -> Iterator[Chunk]:
        from tritonclient.utils import InferenceServerException
        timeout = self.timeout_s if timeout_s is None else timeout_s
        inputs = build_inputs(prompt, max_tokens, stream=stream, **kw)
        q: queue.Queue = queue.Queue()
        try:
            client = self._client()
        except InferenceServerException as e:
            raise classify(e.message(), str(e.status())) from None
        finished = False
        try:
            try:
                client.start_stream(callback=lambda result, error: q.put((result, error)))
                client.async_stream_infer(self.model, inputs, enable_empty_final_response=True)
            except InferenceServerException as e:
                # A stream that already failed reports why through the callback.
                try:
                    _, error = q.get(timeout=2)
                except queue.Empty:
                    error = None
                if error is not None:
                    e = error
                raise classify(e.message(), str(e.status()) if e.status() else None) from None
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeoutError(f"no complete answer from {self.url} ({self.model}) within {timeout} s")
                try:
                    result, error = q.get(timeout=remaining)
                except queue.Empty:
                    continue
                if error is not None:
                    msg = error.message() if hasattr(error, "message") else str(error)
                    status = str(error.status()) if hasattr(error, "status") and error.status() else None
                    raise classify(msg, status)
                resp = result.get_response()
                is_final = resp.parameters["triton_final_response"].bool_param \
                    if "triton_final_response" in resp.parameters else False
                text = _first(result, "text_output")
                chunk = Chunk(text=text or "", analysis=_first(result, "analysis_output") or "", final=is_final,
                              finish_reason=_first(result, "finish_reason"),
                              num_input_tokens=_first(result, "num_input_tokens"),
                              num_output_tokens=_first(result, "num_output_tokens"))
                ids, lps, ctx = (_array(result, n) for n in ("output_ids", "output_log_probs", "context_logits"))
                if ids is not None:
                    chunk.output_ids = [int(x) for x in ids.reshape(-1)]
                if lps is not None:
                    chunk.output_log_probs = [float(x) for x in lps.reshape(-1)]
                if ctx is not None:
                    chunk.context_logits = ctx.reshape(ctx.shape[-2], ctx.shape[-1]).astype(np.float32, copy=False)
                if is_final:
                    finished = True
                if resp.outputs or is_final:
                    yield chunk
                if is_final:
                    return
        finally:
            try:
                client.stop_stream(cancel_requests=not finished)
            except Exception:  # noqa: BLE001
                pass
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass

    def generate(self, prompt: str | bytes, max_tokens: int = 128, *, stream: bool = False,
                 timeout_s: float | None = None, on_chunk=None, **kw) -> Result:
        """The whole answer. stream=True collects a streamed answer (on_chunk(chunk) is called per chunk)."""
        t0 = time.perf_counter()
        res = Result(text="")
        texts, analyses = [], []
        for chunk in self.stream(prompt, max_tokens, stream=stream, timeout_s=timeout_s, **kw):
            if res.time_to_first_chunk_s is None:
                res.time_to_first_chunk_s = time.perf_counter() - t0
            res.chunks += 1
            texts.append(chunk.text)
            analyses.append(chunk.analysis)
            for name in ("finish_reason", "num_input_tokens", "num_output_tokens"):
                v = getattr(chunk, name)
                if v is not None:
                    setattr(res, name, v)
            for name in ("output_ids", "output_log_probs"):
                v = getattr(chunk, name)
                if v is not None:
                    setattr(res, name, (getattr(res, name) or []) + v)
            if chunk.context_logits is not None:
                res.context_logits = chunk.context_logits
            if on_chunk is not None:
                on_chunk(chunk)
        res.text, res.analysis = "".join(texts), "".join(analyses)
        res.total_s = time.perf_counter() - t0
        return res

    def chat(self, message: str, history: Sequence[dict] = (), **kw) -> Result:
        return self.generate(message, history=list(history), **kw)

    def close(self) -> None:
        pass

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def generate_many(url: str, prompts: Sequence[str], model: str = DEFAULT_MODEL, **kw) -> list[Result]:
    """Run requests concurrently (one thread and gRPC stream each); results in order."""
    out: list = [None] * len(prompts)
    errors: list = [None] * len(prompts)

    def run(i, p):
        try:
            out[i] = LLMClient(url, model).generate(p, **kw)
        except Exception as e:  # noqa: BLE001
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        if e is not None:
            raise e
    return out
