"""What the `tensorrt_llm` model runs: TensorRT-LLM's LLM API where it is installed and a GPU is present, the
reference runtime (runtime/) otherwise. Both take GenRequests (model_repo.inflight) and call their emit callback
per step, so the Triton glue is the same.

    backend = make_backend(engine_dir, "auto", max_batch_size=16, max_seq_len=4096)
    backend.submit(GenRequest(...)); backend.cancel(request_id); backend.shutdown()
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Callable

from model_repo.inflight import GenRequest, InflightBatcher
from model_repo.requests import DRAIN_FILE_ENV

TRTLLM_UNVALIDATED = ("the TensorRT-LLM LLM-API path is UNVALIDATED: it is written against upstream's documented "
                      "LLM API (LLM, generate_async(streaming=True), SamplingParams) and has never run in this "
                      "project's CI, which has no GPU; check its answers against the reference runtime before use")


class BackendError(RuntimeError):
    pass


class ReferenceBackend:
    name = "reference"

    def __init__(self, engine_dir: Path, max_batch_size: int, max_seq_len: int, log: Callable[[str], None],
                 cpu_threads: int = 1):
        import torch
        from runtime import Runtime
        if cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        self.runtime = Runtime.from_dir(engine_dir)
        self.vocab_size = self.runtime.network.vocab_size
        self.max_seq_len = max_seq_len
        self.default_stop_ids = tuple(self.runtime.eos_token_ids)
        drain_file = os.environ.get(DRAIN_FILE_ENV)
        self.batcher = InflightBatcher(self.runtime, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                                       log=log, draining=(lambda: os.path.exists(drain_file)) if drain_file else None)
        self.batcher.start()
        self.warmup()

    def warmup(self, timeout: float = 120.0) -> None:
        """One short generation before the model reports ready, so the first client does not pay for it."""
        done = threading.Event()
        self.batcher.submit(GenRequest("warmup", [0, 1, 2, 3], 2, emit=lambda t, r, m: r and done.set()))
        done.wait(timeout)

    def submit(self, req: GenRequest) -> None:
        self.batcher.submit(req)

    def cancel(self, request_id: str) -> None:
        self.batcher.cancel(request_id)

    def shutdown(self) -> None:
        self.batcher.stop()


class TrtllmBackend:
    """TensorRT-LLM's LLM API (PyTorch backend, which is where gpt-oss lives upstream). UNVALIDATED here."""
    name = "trtllm"

    def __init__(self, engine_dir: Path, max_batch_size: int, max_seq_len: int, log: Callable[[str], None],
                 options: dict | None = None):
        import tensorrt_llm  # noqa: F401  (GPU machines only; imported here, never at module import)
        from tensorrt_llm import LLM
        log("WARNING: " + TRTLLM_UNVALIDATED)
        self.log = log
        self.max_seq_len = max_seq_len
        opts = dict(options or {})
        opts.setdefault("max_batch_size", max_batch_size)
        opts.setdefault("max_seq_len", max_seq_len)
        ckpt = _checkpoint_dir(engine_dir)
        self.llm = LLM(model=str(ckpt), **opts)
        cfg = _read_json(ckpt / "config.json")
        self.vocab_size = int(cfg.get("vocab_size", 0)) or 201088
        eos = cfg.get("eos_token_id")
        self.default_stop_ids = tuple(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trtllm-loop", daemon=True)
        self._thread.start()
        self._running: dict[str, object] = {}

    def submit(self, req: GenRequest) -> None:
        asyncio.run_coroutine_threadsafe(self._run(req), self._loop)

    async def _run(self, req: GenRequest) -> None:
        from tensorrt_llm import SamplingParams
        stop_ids = sorted(req.stop.tokens)
        kw = dict(max_tokens=req.max_tokens, temperature=req.temperature if req.temperature > 0 else None,
                  top_k=req.top_k or None, top_p=req.top_p if req.top_p < 1.0 else None, seed=req.seed,
                  stop_token_ids=stop_ids or None)
        if req.stop.sequences:
            self.log(f"request {req.request_id}: multi-token stop words are checked after generation on this path")
        if req.return_log_probs:
            kw["logprobs"] = 1              # upstream: top-k logprobs per token; the sampled token's is included
        if req.return_context_logits:
            kw["return_context_logits"] = True
        params = SamplingParams(**{k: v for k, v in kw.items() if v is not None})
        sent = 0
        try:
            stream = self.llm.generate_async(list(req.prompt), sampling_params=params, streaming=True)
            self._running[req.request_id] = stream
            async for out in stream:
                ids = list(out.outputs[0].token_ids)
                new, sent = ids[sent:], len(ids)
                if req.return_context_logits and req.context_logits is None:
                    ctx = getattr(out, "context_logits", None)
                    if ctx is not None:
                        req.context_logits = _to_numpy(ctx)
                if req.return_log_probs:
                    req.log_probs.extend(_sampled_logprobs(getattr(out.outputs[0], "logprobs", None), ids,
                                                           len(req.log_probs), len(ids)))
                if req.is_cancelled is not None and req.is_cancelled():
                    stream.abort()
                    req.emit(new, "cancelled", None)
                    return
                if out.finished:
                    reason = out.outputs[0].finish_reason or "stop"
                    req.emit(new, "length" if reason == "length" else "stop", None)
                    return
                if new:
                    req.emit(new, None, None)
        except Exception as e:  # noqa: BLE001
            req.emit([], "error", f"TensorRT-LLM generation failed: {type(e).__name__}: {e}")
        finally:
            self._running.pop(req.request_id, None)

    def cancel(self, request_id: str) -> None:
        stream = self._running.get(request_id)
        if stream is not None:
            self._loop.call_soon_threadsafe(stream.abort)

    def shutdown(self) -> None:
        try:
            self.llm.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


def _to_numpy(t):
    import numpy as np
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def _sampled_logprobs(logprobs, ids: list, start: int, end: int) -> list:
    """Logprobs of ids[start:end] from an LLM-API completion's `logprobs`: per token either a float or a dict
    {token_id: Logprob(logprob=...)} (upstream's TokenLogprobs); NaN where the entry is missing. UNVALIDATED."""
    out = []
    for i in range(start, end):
        entry = logprobs[i] if logprobs is not None and i < len(logprobs) else None
        if isinstance(entry, dict):
            entry = entry.get(ids[i])
            entry = getattr(entry, "logprob", entry)
        out.append(float("nan") if entry is None else float(entry))
    return out


def _read_json(path: Path) -> dict:
    import json
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _checkpoint_dir(engine_dir: Path) -> Path:
    for sub in ("", "checkpoint", "weights", "hf"):
        if (engine_dir / sub / "config.json").is_file():
            return engine_dir / sub
    raise BackendError(f"{engine_dir}: no checkpoint (config.json) in the engine directory")


def trtllm_available() -> bool:
    """TensorRT-LLM importable and a CUDA device present (checked without importing tensorrt_llm's heavy init)."""
    import importlib.util
    if importlib.util.find_spec("tensorrt_llm") is None:
        return False
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def load_llm_api_options(engine_dir: Path, path: str | None) -> dict:
    """The engine's LLM-API options (llm_api_options.yaml, written by build-engine for GPU targets)."""
    f = Path(path) if path else engine_dir / "llm_api_options.yaml"
    if not f.is_absolute():
        f = engine_dir / f
    if not f.is_file():
        return {}
    import yaml
    data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise BackendError(f"{f}: expected a mapping of LLM-API options")
    return data


def make_backend(engine_dir: str | Path, kind: str = "auto", *, max_batch_size: int = 16, max_seq_len: int = 4096,
                 options_file: str | None = None, cpu_threads: int = 1, log: Callable[[str], None] = print):
    """cpu_threads: torch threads of the reference runtime (0: torch's default)."""
    engine_dir = Path(engine_dir)
    if kind == "auto":
        kind = "trtllm" if trtllm_available() else "reference"
    if kind == "reference":
        return ReferenceBackend(engine_dir, max_batch_size, max_seq_len, log, cpu_threads)
    if kind == "trtllm":
        return TrtllmBackend(engine_dir, max_batch_size, max_seq_len, log, load_llm_api_options(engine_dir, options_file))
    raise BackendError(f"unknown backend {kind!r}; use auto, reference or trtllm")
