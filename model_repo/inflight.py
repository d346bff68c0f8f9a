"""In-flight batching over the reference runtime: a scheduler thread admits new requests between decode steps.

The runtime (runtime.Runtime) offers whole-batch generate(); this builds the step-level scheduler on its primitives
(ReferenceModel.forward + KVCache, runtime.sampling). The batch KV cache has `max_batch_size` rows ("slots").
Each scheduler iteration:
1. admits queued requests into free slots and prefills them together in a small cache of their own (only their
   rows, so a prefill does not pay for the idle slots), then moves their rows into the batch cache and samples
   their first token;
2. runs one decode step over the batch cache: every running sequence feeds its last token at its next position,
   free slots feed padding (position -1, never cached, never attended to).
A finished or cancelled sequence frees its slot at once; the next queued request takes it at the next iteration.
Each request samples with its own generator, so seeded requests are reproducible whatever shares the batch.

Runtime API gap (reported): KVCache has no per-row reset or row copy yet, so `reset_cache_row` and
`copy_cache_row` reach into its slot->position tables and buffers. If those internals change shape, the batcher
falls back to prefilling new requests inside the batch cache (correct, but a prefill then computes every slot).

    b = InflightBatcher(runtime, max_batch_size=16); b.start()
    b.submit(GenRequest("id", prompt_ids, max_tokens, ..., emit=emit))   # emit(new_ids, finish_reason, error)
    GenRequest(..., return_log_probs=True, return_context_logits=True)  # req.log_probs, req.context_logits filled
    b.cancel("id"); b.stop()
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from model_repo.requests import SHUTTING_DOWN, StopCriteria

# emit(token_ids, finish_reason, error_message): finish_reason None while running, else "stop", "length",
# "cancelled" or "error" (then error_message says why).
Emit = Callable[[list, "str | None", "str | None"], None]


@dataclass
class GenRequest:
    request_id: str
    prompt: list
    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: StopCriteria = field(default_factory=StopCriteria)
    emit: Emit | None = None
    is_cancelled: Callable[[], bool] | None = None
    arrival: float = field(default_factory=time.monotonic)
    # Upstream's return_log_probs / return_context_logits. The batcher fills these before the emit call that
    # carries the tokens concerned: `log_probs` gains the logprob (raw distribution, before temperature) of each
    # generated token; `context_logits` is the float32 [len(prompt), vocab] logits of the prompt, set at prefill.
    return_log_probs: bool = False
    return_context_logits: bool = False
    log_probs: list = field(default_factory=list)
    context_logits: object = None


@dataclass
class _Slot:
    req: GenRequest
    params: object                 # runtime.sampling.SamplingParams
    generator: object              # torch.Generator | None
    next_pos: int
    last_token: int = -1
    output: list = field(default_factory=list)
    prefilled: bool = False


def reset_cache_row(cache, row: int) -> None:
    """Forget everything cached for one batch row, so a new sequence can use it."""
    reset = getattr(cache, "reset_rows", None)
    if reset is not None:
        reset([row])
        return
    # Attention masks are built from the slot->position tables, so emptying a row's positions frees the row.
    for g in cache.groups:
        g.pos[row].fill_(-1)


class CacheLayoutError(RuntimeError):
    pass


def copy_cache_row(dst, dst_row: int, src, src_row: int) -> None:
    """Move one sequence's cached keys/values (and the positions they hold) from `src` to row `dst_row` of `dst`."""
    copy = getattr(dst, "copy_rows_from", None)
    if copy is not None:
        copy(src, [src_row], [dst_row])
        return
    try:
        if len(dst.groups) != len(src.groups) or len(dst.k) != len(src.k):
            raise CacheLayoutError("caches of different networks")
        for gd, gs in zip(dst.groups, src.groups):
            if gd.window != gs.window or gd.layers != gs.layers:
                raise CacheLayoutError("caches with different layer groups")
            n = gs.pos.shape[1]
            if n > gd.pos.shape[1]:
                if gd.window is not None:
                    raise CacheLayoutError("ring buffers of different sizes")
                dst._grow(gd, n)
            gd.pos[dst_row].fill_(-1)
            gd.pos[dst_row, :n] = gs.pos[src_row]
            if hasattr(gd, "used"):
                gd.used = max(gd.used, gs.used)
        for layer in range(len(dst.k)):
            n = src.k[layer].shape[2]
            dst.k[layer][dst_row, :, :n] = src.k[layer][src_row]
            dst.v[layer][dst_row, :, :n] = src.v[layer][src_row]
    except (AttributeError, TypeError, IndexError, RuntimeError) as e:
        raise CacheLayoutError(f"cannot copy KV-cache rows with this runtime ({type(e).__name__}: {e})") from e


class InflightBatcher:
    def __init__(self, runtime, max_batch_size: int = 16, max_seq_len: int | None = None,
                 default_stop_ids: Sequence[int] = (), log: Callable[[str], None] | None = None,
                 draining: Callable[[], bool] | None = None):
        from runtime.sampling import SamplingParams, make_generator, sample
        self._SamplingParams, self._make_generator, self._sample = SamplingParams, make_generator, sample
        self.runtime = runtime
        self.model = runtime.model
        self.max_batch_size = int(max_batch_size)
        self.max_seq_len = max_seq_len
        self.default_stop_ids = tuple(default_stop_ids)
        self.log = log or (lambda msg: None)
        self._draining = draining      # true once the server stops: every request then ends with an error
        self._next_drain_check = 0.0
        self._queue: collections.deque[GenRequest] = collections.deque()
        self._cancelled: set[str] = set()
        self._cv = threading.Condition()
        self._slots: list[_Slot | None] = [None] * self.max_batch_size
        self._cache = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.max_active = 0          # the most sequences one decode step has run (in-flight batching at work)
        self.prefill_apart = True    # prefill new requests in their own cache (see copy_cache_row)

    # -- public ------------------------------------------------------------------------------------------
    def start(self) -> "InflightBatcher":
        self._thread = threading.Thread(target=self._loop, name="inflight-batcher", daemon=True)
        self._thread.start()
        return self

    def submit(self, req: GenRequest) -> None:
        with self._cv:
            if self._stopping:
                raise RuntimeError("the batcher is stopping")
            self._queue.append(req)
            self._cv.notify()

    def cancel(self, request_id: str) -> None:
        with self._cv:
            self._cancelled.add(request_id)
            self._cv.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def active(self) -> int:
        return sum(s is not None for s in self._slots)

    # -- the loop -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            self._run()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._queue and self.active == 0:
                    self._cv.wait()
                if self._stopping:
                    break
                admitted = self._admit_locked()
                cancelled, self._cancelled = self._cancelled, set()
            if self._draining is not None and time.monotonic() >= self._next_drain_check:
                self._next_drain_check = time.monotonic() + 0.1
                if _safe(self._draining):
                    self._end_all(SHUTTING_DOWN)
            for i, s in enumerate(self._slots):
                if s is not None and (s.req.request_id in cancelled or
                                      (s.req.is_cancelled is not None and _safe(s.req.is_cancelled))):
                    self._finish(i, "cancelled")
            if self.active == 0:
                continue
            try:
                self._step()
            except Exception as e:   # a failed step fails its sequences, never the server
                msg = f"generation failed: {type(e).__name__}: {e}"
                self.log(msg + "\n" + traceback.format_exc())
                for i, s in enumerate(self._slots):
                    if s is not None:
                        self._finish(i, "error", msg)
                self._cache = None
            del admitted
        self._end_all(SHUTTING_DOWN)

    def _end_all(self, message: str) -> None:
        """Every running and queued request ends now (finish reason "cancelled", with `message`)."""
        for i, s in enumerate(self._slots):
            if s is not None:
                self._finish(i, "cancelled", message)
        with self._cv:
            queued, self._queue = list(self._queue), collections.deque()
        for req in queued:
            self._emit(req, [], "cancelled", message)

    def _admit_locked(self) -> int:
        n = 0
        for i in range(self.max_batch_size):
            if not self._queue:
                break
            if self._slots[i] is not None:
                continue
            req = self._queue.popleft()
            if req.request_id in self._cancelled:
                self._cancelled.discard(req.request_id)
                self._emit(req, [], "cancelled", None)
                continue
            try:
                params = self._SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_k=req.top_k,
                                              top_p=req.top_p, seed=req.seed, stop_token_ids=())
                gen = self._make_generator(params, self.model.device)
            except Exception as e:
                self._emit(req, [], "error", f"bad sampling parameters: {e}")
                continue
            if self._cache is None:
                self._cache = self.model.new_cache(self.max_batch_size, capacity=max(len(req.prompt) + req.max_tokens, 16))
            reset_cache_row(self._cache, i)
            self._slots[i] = _Slot(req, params, gen, next_pos=0)
            n += 1
        return n

    def _step(self) -> None:
        new = [i for i, s in enumerate(self._slots) if s is not None and not s.prefilled]
        if new and self.prefill_apart:
            try:
                self._prefill(new)
            except CacheLayoutError as e:
                self.log(f"in-flight batcher: {e}; prefilling inside the batch cache from now on")
                self.prefill_apart = False
            except Exception:  # noqa: BLE001 - a failed prefill fails only the request(s) that broke it
                for i in new:
                    if self._slots[i] is None or self._slots[i].prefilled:
                        continue
                    try:
                        self._prefill([i])
                    except Exception as e:  # noqa: BLE001
                        msg = f"generation failed: {type(e).__name__}: {e}"
                        self.log(msg + "\n" + traceback.format_exc())
                        self._finish(i, "error", msg)
        live = [i for i, s in enumerate(self._slots) if s is not None]
        if live:
            self._batch_step(live)
        if self.active == 0:
            self._cache = None          # all idle: give the cache memory back

    def _prefill(self, rows: list) -> None:
        """Prompts of newly admitted requests, together, in a cache holding only their rows."""
        prompts = [self._slots[i].req.prompt for i in rows]
        T = max(len(p) for p in prompts)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        pos = torch.full((len(rows), T), -1, dtype=torch.long)
        for k, p in enumerate(prompts):
            ids[k, :len(p)] = torch.tensor(p, dtype=torch.long)
            pos[k, :len(p)] = torch.arange(len(p))
        small = self.model.new_cache(len(rows), capacity=T)
        want_all = any(self._slots[i].req.return_context_logits for i in rows)
        logits = self.model.forward(ids, pos, small, logits="all" if want_all else "last")
        if want_all:
            logits = self._keep_context_logits(logits, rows, [len(p) for p in prompts])
        for k, i in enumerate(rows):
            copy_cache_row(self._cache, i, small, k)
        tokens, failed = self._sample_rows(logits, rows)
        lps = self._log_probs(logits, tokens, rows)
        for k, i in enumerate(rows):
            if k in failed:
                self._finish(i, "error", failed[k])
            else:
                self._advance(i, int(tokens[k]), lps[k])

    def _sample_rows(self, logits, rows: list):
        """Sample each row's next token; a row whose sampling fails is that request's error, not the batch's.
        -> (tokens [len(rows)] long, {k: error message} for the rows that failed)."""
        params = [self._slots[i].params for i in rows]
        gens = [self._slots[i].generator for i in rows]
        if all(p.greedy for p in params):
            return self._sample(logits, params, gens), {}
        # Row by row: a failure after another row has drawn from its generator would otherwise force a redraw
        # and change what a seeded request samples.
        tokens = torch.zeros(len(rows), dtype=torch.long)
        failed = {}
        for k, i in enumerate(rows):
            try:
                tokens[k] = self._sample(logits[k:k + 1], params[k:k + 1], gens[k:k + 1])[0]
            except Exception as e:  # noqa: BLE001 - one request's sampling failure is that request's error
                failed[k] = f"sampling failed for this request: {type(e).__name__}: {e}"
                self.log(f"request {self._slots[i].req.request_id}: {failed[k]}")
        return tokens, failed

    def _keep_context_logits(self, logits, rows: list, lens: list):
        """logits [B, T, V] of a prefill -> each requesting row's prompt logits kept; -> the last-token logits."""
        for k, i in enumerate(rows):
            req = self._slots[i].req
            if req.return_context_logits:
                req.context_logits = logits[k, :lens[k]].float().cpu().numpy().copy()
        return logits[torch.arange(len(rows)), torch.tensor(lens) - 1]

    def _log_probs(self, logits, tokens, rows: list) -> list:
        """Per row: the logprob of its sampled token under the raw distribution if its request asked, else None."""
        if not any(self._slots[i].req.return_log_probs for i in rows):
            return [None] * len(rows)
        lp = torch.log_softmax(logits.float(), dim=-1)
        picked = lp[torch.arange(len(rows)), tokens.to(lp.device).long()].tolist()
        return [picked[k] if self._slots[i].req.return_log_probs else None for k, i in enumerate(rows)]

    def _batch_step(self, live: list) -> None:
        """One forward over the batch cache: a decode token for prefilled rows, the prompt for any others."""
        B = self.max_batch_size
        T = max((len(self._slots[i].req.prompt) if not self._slots[i].prefilled else 1) for i in live)
        ids = torch.zeros(B, T, dtype=torch.long)
        pos = torch.full((B, T), -1, dtype=torch.long)
        for i in live:
            s = self._slots[i]
            if s.prefilled:
                ids[i, 0] = s.last_token
                pos[i, 0] = s.next_pos
            else:
                n = len(s.req.prompt)
                ids[i, :n] = torch.tensor(s.req.prompt, dtype=torch.long)
                pos[i, :n] = torch.arange(n)
        want_all = any(not self._slots[i].prefilled and self._slots[i].req.return_context_logits for i in live)
        logits = self.model.forward(ids, pos, self._cache, logits="all" if want_all else "last")
        rows = torch.tensor(live)
        if want_all:
            lens = [1 if self._slots[i].prefilled else len(self._slots[i].req.prompt) for i in live]
            full = logits[rows]
            for k, i in enumerate(live):
                req = self._slots[i].req
                if not self._slots[i].prefilled and req.return_context_logits:
                    req.context_logits = full[k, :lens[k]].float().cpu().numpy().copy()
            picked = full[torch.arange(len(live)), torch.tensor(lens) - 1]
        else:
            picked = logits[rows]
        tokens, failed = self._sample_rows(picked, live)
        lps = self._log_probs(picked, tokens, live)
        self.steps += 1
        self.max_active = max(self.max_active, len(live))
        for k, i in enumerate(live):
            if k in failed:
                self._finish(i, "error", failed[k])
            else:
                self._advance(i, int(tokens[k]), lps[k])

    def _advance(self, i: int, tok: int, logprob: float | None = None) -> None:
        """Row i produced `tok`: record it, then stream it or finish the request."""
        s = self._slots[i]
        if s.req.return_log_probs:
            s.req.log_probs.append(float("nan") if logprob is None else logprob)
        s.next_pos = s.next_pos + 1 if s.prefilled else len(s.req.prompt)
        s.prefilled = True
        s.last_token = tok
        s.output.append(tok)
        reason = None
        if s.req.stop.hit(s.output):
            reason = "stop"
        elif len(s.output) >= s.req.max_tokens or (self.max_seq_len and s.next_pos + 1 >= self.max_seq_len):
            reason = "length"
        if reason is None:
            self._emit(s.req, [tok], None, None)
        else:
            self._finish(i, reason, tokens=[tok])

    def _finish(self, i: int, reason: str, message: str | None = None, tokens: list | None = None) -> None:
        s = self._slots[i]
        self._slots[i] = None
        if reason == "cancelled":
            self.log(f"request {s.req.request_id} cancelled after {len(s.output)} tokens; its slot is free")
        self._emit(s.req, tokens or [], reason, message)
        # Its final response is out: prompt logits (up to the per-request cap) are not kept for anyone.
        s.req.context_logits = None

    def _emit(self, req: GenRequest, tokens: list, reason, message) -> None:
        if req.emit is None:
            return
        try:
            req.emit(tokens, reason, message)
        except Exception as e:    # a broken client connection must not stop the loop
            self.log(f"request {req.request_id}: sending a response failed: {e}")


def _safe(fn) -> bool:
    try:
        return bool(fn())
    except Exception:
        return False
