"""What the `tensorrt_llm` model runs: TensorRT-LLM's LLM API where it is installed and a GPU is present, the
reference runtime's in-flight scheduler (runtime.scheduler) otherwise. Both take runtime.scheduler.Requests and
call their emit callback as tokens come, so the Triton glue is the same.

    backend = make_backend(engine_dir, "auto", max_batch_size=16, max_seq_len=4096)
    backend.submit(runtime.scheduler.Request(...)); backend.cancel(request_id); backend.shutdown()
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Callable

from model_repo.requests import DRAIN_FILE_ENV
from runtime.sampling import SamplingParams
from runtime.scheduler import Request, Scheduler

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


def resolve_backend(engine_dir: Path, kind: str = "auto", present=None) -> str:
    """"reference" or "trtllm" for this engine on this machine, honouring the target the engine was built for:
    a CPU engine never goes to TensorRT-LLM, and a GPU engine goes to the reference runtime (which emulates
    its numerics on the CPU) only when asked for by name. BackendError says why and what to pass instead."""
    from runtime.devices import detect_gpus
    from spec.engine_values import ENGINE_ERRORS, read_engine
    if kind not in ("auto", "reference", "trtllm"):
        raise BackendError(f"unknown backend {kind!r}; use auto, reference or trtllm")
    try:
        m = read_engine(engine_dir).manifest
    except ENGINE_ERRORS as e:
        raise BackendError(str(e)) from None
    if kind == "reference":
        return kind
    if not m.runs_on_gpu:
        if kind == "trtllm":
            raise BackendError(f"{engine_dir} was built for the CPU (--gpu cpu, {m.quant}); TensorRT-LLM serves GPU "
                               f"engines: rebuild with build-engine --gpu <your GPU>, or serve with --backend reference")
        return "reference"
    present = detect_gpus() if present is None else present
    here = ", ".join(sorted({f"{g.name} (SM {g.sm})" for g in present})) or "no NVIDIA GPU"
    if not any(g.sm == m.sm for g in present):
        raise BackendError(f"{engine_dir} was built for {m.gpu} (SM {m.sm}) and this machine has {here}: "
                           f"TensorRT-LLM cannot run it here. Serve it on a {m.gpu} box, rebuild for this machine "
                           f"(build-engine --gpu ...), or pass --backend reference to emulate its {m.quant} "
                           f"numerics with the reference runtime on the CPU")
    if not trtllm_available():
        raise BackendError(f"{engine_dir} is a {m.gpu} engine and this machine has the GPU, but tensorrt_llm is not "
                           f"importable: install TensorRT-LLM (or NVIDIA's Triton TensorRT-LLM container), or pass "
                           f"--backend reference")
    return "trtllm"


def make_backend(engine_dir: str | Path, kind: str = "auto", *, max_batch_size: int = 16, max_seq_len: int = 4096,
                 options_file: str | None = None, cpu_threads: int = 1, log: Callable[[str], None] = print):
    """cpu_threads: torch threads of the reference runtime (0: torch's default)."""
    engine_dir = Path(engine_dir)
    kind = resolve_backend(engine_dir, kind)
    if kind == "reference":
        return ReferenceBackend(engine_dir, max_batch_size, max_seq_len, log, cpu_threads)
    return TrtllmBackend(engine_dir, max_batch_size, max_seq_len, log, options_file)
