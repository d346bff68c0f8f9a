"""What the `tensorrt_llm` model runs: the executor runtime.executors.choice.choose_executor picks (the same rule
as run-engine): the runtime's in-flight scheduler (runtime.scheduler) over ONNX Runtime, the reference runtime or
the TensorRT plan (ExecutorBackend), or TensorRT-LLM's LLM API on datacenter GPUs (TrtllmBackend). Both take
runtime.scheduler.Requests and call their emit callback as tokens come, so the Triton glue is the same.

    backend = make_backend(engine_dir, "auto", max_batch_size=16, max_seq_len=4096)   # --executor's values
    backend.submit(runtime.scheduler.Request(...)); backend.cancel(request_id); backend.shutdown()
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Callable

from model_repo.requests import DRAIN_FILE_ENV
from runtime.executors.choice import ExecutorChoiceError
from runtime.sampling import SamplingParams
from runtime.scheduler import Request, Scheduler

TRTLLM_UNVALIDATED = ("the TensorRT-LLM LLM-API path is UNVALIDATED: it is written against upstream's documented "
                      "LLM API (LLM, generate_async(streaming=True), SamplingParams) and has never run in this "
                      "project's CI, which has no GPU; check its answers against the reference runtime before use")


class BackendError(RuntimeError):
    pass


class ExecutorBackend:
    """The runtime's in-flight scheduler over one of its executors (ONNX Runtime, the reference runtime, the
    TensorRT plan): the same batching, stop rules, cancellation, logprobs and context logits whichever runs."""

    def __init__(self, engine_dir: Path, choice, max_batch_size: int, max_seq_len: int,
                 log: Callable[[str], None], cpu_threads: int = 1):
        import torch
        from runtime.executors import LOADERS
        if cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        self.name = choice.name
        self.choice = choice
        if choice.name == "onnxruntime":
            from runtime.executors.onnxruntime import load_onnxruntime
            self.runtime = load_onnxruntime(engine_dir, threads=cpu_threads or None)
        else:
            self.runtime = LOADERS[choice.name](engine_dir, torch.float32)
        self.vocab_size = self.runtime.network.vocab_size
        self.max_seq_len = max_seq_len
        self.default_stop_ids = tuple(self.runtime.eos_token_ids)
        # serve-engine creates this file when it stops: every request then ends with an error saying so.
        drain_file = os.environ.get(DRAIN_FILE_ENV)
        self.scheduler = Scheduler(self.runtime.model, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                                   log=log, draining=(lambda: os.path.exists(drain_file)) if drain_file else None).start()
        self.warmup()

    def warmup(self, timeout: float = 120.0) -> None:
        """One short generation before the model reports ready, so the first client does not pay for it."""
        done = threading.Event()
        self.scheduler.submit(Request("warmup", [0, 1, 2, 3], SamplingParams(max_tokens=2),
                                      emit=lambda t, r, m: r and done.set()))
        done.wait(timeout)

    def submit(self, req: Request) -> None:
        self.scheduler.submit(req)

    def cancel(self, request_id: str) -> None:
        self.scheduler.cancel(request_id)

    def shutdown(self) -> None:
        self.scheduler.stop()
        close = getattr(self.runtime.model, "close", None)
        if close is not None:
            close()


class TrtllmBackend:
    """TensorRT-LLM's LLM API (PyTorch backend, which is where gpt-oss lives upstream). UNVALIDATED here."""
    name = "trtllm"

    def __init__(self, engine_dir: Path, max_batch_size: int, max_seq_len: int, log: Callable[[str], None],
                 options_file: str | None = None):
        from model_repo.trtllm import checkpoint_dir, llm_kwargs
        kwargs = llm_kwargs(engine_dir, options_file, max_batch_size=max_batch_size, max_seq_len=max_seq_len)
        import tensorrt_llm  # noqa: F401  (GPU machines only; imported here, never at module import)
        from tensorrt_llm import LLM
        log("WARNING: " + TRTLLM_UNVALIDATED)
        self.log = log
        self.max_seq_len = max_seq_len
        self.llm = LLM(**kwargs)
        cfg = _read_json(checkpoint_dir(engine_dir) / "config.json")
        self.vocab_size = int(cfg.get("vocab_size", 0)) or 201088
        eos = cfg.get("eos_token_id")
        self.default_stop_ids = tuple(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trtllm-loop", daemon=True)
        self._thread.start()
        self._running: dict[str, object] = {}
        self._aborted: set[str] = set()

    def submit(self, req: Request) -> None:
        asyncio.run_coroutine_threadsafe(self._run(req), self._loop)

    async def _run(self, req: Request) -> None:
        from tensorrt_llm import SamplingParams as LlmSamplingParams
        p = req.params
        stop_ids = sorted(self.default_stop_ids if p.stop_token_ids is None else p.stop_token_ids)
        kw = dict(max_tokens=p.max_tokens, temperature=p.temperature if p.temperature > 0 else None,
                  top_k=p.top_k or None, top_p=p.top_p if p.top_p < 1.0 else None, seed=p.seed,
                  stop_token_ids=stop_ids or None, ignore_eos=True if not stop_ids else None)
        if p.stop_sequences:
            self.log(f"request {req.request_id}: multi-token stop words are checked after generation on this path")
        if p.logprobs:
            kw["logprobs"] = 1              # upstream: top-k logprobs per token; the sampled token's is included
        if p.prompt_logits:
            kw["return_context_logits"] = True
        params = LlmSamplingParams(**{k: v for k, v in kw.items() if v is not None})
        sent = 0
        try:
            stream = self.llm.generate_async(list(req.prompt), sampling_params=params, streaming=True)
            self._running[req.request_id] = stream
            async for out in stream:
                ids = list(out.outputs[0].token_ids)
                new, sent = ids[sent:], len(ids)
                if p.prompt_logits and req.context_logits is None:
                    ctx = getattr(out, "context_logits", None)
                    if ctx is not None:
                        req.context_logits = _to_numpy(ctx)
                if p.logprobs:
                    req.log_probs.extend(_sampled_logprobs(getattr(out.outputs[0], "logprobs", None), ids,
                                                           len(req.log_probs), len(ids)))
                req.output_ids.extend(new)
                if out.finished or req.request_id in self._aborted:
                    reason = out.outputs[0].finish_reason or "stop"
                    if req.request_id in self._aborted:
                        reason = "cancelled"
                    req.emit(new, reason if reason in ("length", "cancelled") else "stop", None)
                    return
                if new:
                    req.emit(new, None, None)
            req.emit([], "cancelled" if req.request_id in self._aborted else "stop", None)
        except Exception as e:  # noqa: BLE001
            req.emit([], "error", f"TensorRT-LLM generation failed: {type(e).__name__}: {e}")
        finally:
            self._running.pop(req.request_id, None)
            self._aborted.discard(req.request_id)

    def cancel(self, request_id: str) -> None:
        stream = self._running.get(request_id)
        if stream is not None:
            self._aborted.add(request_id)
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


def resolve_executor(engine_dir: Path, executor: str = "auto", present=None, max_seq_len: int | None = None):
    """The ExecutorChoice the served model makes for this engine on this machine (runtime.executors.choice,
    the rule run-engine uses too), holding GPU engines to their GPU. BackendError says why and what to pass."""
    from runtime.executors.choice import choose_executor
    from spec.engine_values import ENGINE_ERRORS, read_engine
    try:
        read_engine(engine_dir)                    # every limit and id range-checked before anything runs
        return choose_executor(engine_dir, executor, tokens=max_seq_len or _max_seq_len(engine_dir), served=True,
                               present=present)
    except (ExecutorChoiceError, *ENGINE_ERRORS) as e:
        raise BackendError(str(e)) from None


def _max_seq_len(engine_dir: Path) -> int | None:
    from spec.manifest import EngineManifest, ManifestError
    try:
        return EngineManifest.read(engine_dir).max_seq_len
    except ManifestError:
        return None


def make_backend(engine_dir: str | Path, executor: str = "auto", *, max_batch_size: int = 16, max_seq_len: int = 4096,
                 options_file: str | None = None, cpu_threads: int = 1, log: Callable[[str], None] = print):
    """cpu_threads: torch threads of the reference runtime, ONNX Runtime's intra-op threads (0: their default).
    The choice and its reason are logged (`log`) and kept as backend.choice."""
    engine_dir = Path(engine_dir)
    choice = resolve_executor(engine_dir, executor, max_seq_len=max_seq_len)
    log(f"tensorrt_llm: {choice.line()}")
    if choice.name == "trtllm":
        backend = TrtllmBackend(engine_dir, max_batch_size, max_seq_len, log, options_file)
        backend.choice = choice
        return backend
    return ExecutorBackend(engine_dir, choice, max_batch_size, max_seq_len, log, cpu_threads)
