"""In-flight batching on the reference runtime: requests join and leave a running batch between decode steps.

The running sequences stay packed in rows [0, n) of one batch KV cache of `max_batch_size` rows, so a decode
step computes n rows, never the idle ones. Each `step()`:
1. admits queued requests into rows [n, n + k) and prefills them together, in place (one forward over those rows
   only: the running rows are neither computed nor touched), and samples their first tokens;
2. decodes every running row (one forward over rows [0, n)).
A sequence that finishes (stop token or sequence, max_tokens, max_seq_len), fails or is cancelled leaves at once:
the last running row moves into its place (KVCache.copy_rows_from), so the rows stay packed.

This is the one sampling and stopping path of the runtime: `runtime.generate` runs a Scheduler synchronously,
and the served model runs one on its own thread (`start()`). Each request samples with its own generator, so a
seeded request draws the same tokens whatever shares its batch.

    s = Scheduler(model, max_batch_size=16).start()
    s.submit(Request("id", prompt_ids, SamplingParams(max_tokens=64), emit=emit))   # emit(new_ids, reason, error)
    s.cancel("id"); s.stop()

`emit(token_ids, finish_reason, error)` runs on the scheduler's thread after each step that concerns the request:
finish_reason is None while it runs, then "stop", "length", "cancelled" or "error" (error says why). It must
return quickly (hand the tokens to another thread for slow work such as network sends).
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from runtime.sampling import SamplingParams, make_generator, sample, stop_hit

Emit = Callable[[list, "str | None", "str | None"], None]
SHUTDOWN_MESSAGE = "the server is shutting down"
# How often a draining check (a file the server creates when it stops) is asked.
DRAIN_CHECK_S = 0.1


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: list
    params: SamplingParams = field(default_factory=SamplingParams)
    emit: Emit | None = None
    # Filled as the request runs, before the emit call that carries the tokens concerned:
    output_ids: list = field(default_factory=list)
    log_probs: list = field(default_factory=list)      # params.logprobs: per generated token, raw distribution
    logits: list = field(default_factory=list)         # params.return_logits: float32 [vocab] per generated token
    context_logits: object = None                      # params.prompt_logits: float32 [len(prompt), vocab]
    finish_reason: str | None = None


@dataclass(eq=False)
class _Row:
    req: Request
    generator: torch.Generator | None
    stop_ids: frozenset
    next_pos: int = 0          # where the last sampled token goes in the next decode step
    last_token: int = -1


class Scheduler:
    def __init__(self, model, max_batch_size: int = 16, max_seq_len: int | None = None, capacity: int = 256,
                 log: Callable[[str], None] | None = None, draining: Callable[[], bool] | None = None):
        """model: runtime.model.ReferenceModel. capacity: initial slots of the full-attention layers (they grow).
        draining: asked a few times a second; once true (the server is stopping) every request ends with an
        error saying so, running or queued, instead of being cut off when the process goes."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = int(max_batch_size)
        self.max_seq_len = max_seq_len
        self.capacity = max(1, int(capacity))
        self.log = log or (lambda msg: None)
        self._queue: collections.deque[Request] = collections.deque()
        self._cancelled: set[str] = set()
        self._cv = threading.Condition()
        self._rows: list[_Row] = []           # row i of the cache holds self._rows[i]
        self._cache = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = draining
        self._next_drain_check = 0.0
        self.steps = 0               # decode steps run
        self.max_active = 0          # the most sequences one decode step has run

    # -- public ------------------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        with self._cv:
            if self._stopping:
                raise RuntimeError("the scheduler is stopping")
            self._queue.append(req)
            self._cv.notify()

    def cancel(self, request_id: str) -> None:
        """Stop a queued or running request at the next step (it gets finish_reason "cancelled")."""
        with self._cv:
            self._cancelled.add(request_id)
            self._cv.notify()

    @property
    def active(self) -> int:
        return len(self._rows)

    def start(self) -> "Scheduler":
        """Serve on a thread of its own, computing with as many torch threads as the caller's (torch's thread
        count is per thread: a new thread would otherwise start with all cores)."""
        self._thread = threading.Thread(target=self._serve, args=(torch.get_num_threads(),),
                                        name="runtime-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._shut_down()

    # -- one iteration --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> bool:
        """Admit, prefill and decode once. -> whether work is left (running or queued requests)."""
        with self._cv:
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                kept = collections.deque()
                for req in self._queue:
                    if req.request_id in cancelled:
                        self._finish_request(req, [], "cancelled")
                    else:
                        kept.append(req)
                self._queue = kept
            new = self._take_new()
        if cancelled:
            self._drop([i for i, r in enumerate(self._rows) if r.req.request_id in cancelled], "cancelled")
        if new:
            self._admit(new)
        if self._rows:
            self._decode()
        with self._cv:
            return bool(self._rows or self._queue)

    def _take_new(self) -> list[Request]:
        """Queued requests for this step's prefill (under self._cv): as many as free rows allow, and, for an
        executor that bounds one forward's tokens (max_forward_tokens: ONNX Runtime's memory estimate), only as
        many as keep the padded prefill (rows x longest prompt) within it; the rest wait for the next step."""
        room = self.max_batch_size - len(self._rows)
        limit = getattr(self.model, "max_forward_tokens", None)
        new, longest = [], 0
        while self._queue and len(new) < room:
            n = len(self._queue[0].prompt)
            if new and limit and (len(new) + 1) * max(longest, n) > limit:
                break
            longest = max(longest, n)
            new.append(self._queue.popleft())
        return new

    def _admit(self, reqs: list[Request]) -> None:
        rows = []
        for req in reqs:
            problem = self._check(req)
            if problem:
                self._finish_request(req, [], "error", problem)
                continue
            rows.append(_Row(req, make_generator(req.params, self.model.device), self._stop_ids(req.params)))
        if not rows:
            return
        if self._cache is None:
            longest = max(len(r.req.prompt) + r.req.params.max_tokens for r in rows)
            self._cache = self.model.new_cache(self.max_batch_size, capacity=max(self.capacity, longest))
        try:
            self._prefill(rows)
        except Exception as e:  # noqa: BLE001 - a prefill failure is the new requests' own: retry them one by one
            if len(rows) == 1:
                self._fail(rows, e, "prefill")
                return
            for r in rows:
                try:
                    self._prefill([r])
                except Exception as e1:  # noqa: BLE001
                    self._fail([r], e1, "prefill")

    def _prefill(self, rows: list[_Row]) -> None:
        """The new rows' prompts, together, in place at rows [n, n + k) of the batch cache."""
        first = len(self._rows)
        k = len(rows)
        lens = [len(r.req.prompt) for r in rows]
        T = max(lens)
        ids = torch.zeros(k, T, dtype=torch.long)
        pos = torch.full((k, T), -1, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, :lens[j]] = torch.tensor(r.req.prompt, dtype=torch.long)
            pos[j, :lens[j]] = torch.arange(lens[j])
        self._cache.reset_rows(range(first, first + k))
        want_all = any(r.req.params.prompt_logits for r in rows)
        logits = self.model.forward(ids, pos, self._cache, logits="all" if want_all else "last", first_row=first)
        if want_all:
            for j, r in enumerate(rows):
                if r.req.params.prompt_logits:
                    r.req.context_logits = logits[j, :lens[j]].float().cpu().clone()
            logits = logits[torch.arange(k), torch.tensor(lens, device=logits.device) - 1]
        for j, r in enumerate(rows):
            r.next_pos = lens[j]
        self._rows.extend(rows)
        self._sample_and_advance(logits, first)

    def _decode(self) -> None:
        rows = self._rows
        n = len(rows)
        ids = torch.tensor([r.last_token for r in rows], dtype=torch.long).view(n, 1)
        pos = torch.tensor([r.next_pos for r in rows], dtype=torch.long).view(n, 1)
        try:
            logits = self.model.forward(ids, pos, self._cache, logits="last")
        except Exception as e:  # noqa: BLE001 - a failed step fails its sequences, never the scheduler
            self._fail(list(rows), e, "decode")
            self._cache = None              # its contents are unknown now
            return
        for r in rows:
            r.next_pos += 1
        self.steps += 1
        self.max_active = max(self.max_active, n)
        self._sample_and_advance(logits, 0)

    def _sample_and_advance(self, logits: torch.Tensor, first: int) -> None:
        """logits [k, V] of rows [first, first + k): sample, record, emit; finished rows leave the batch."""
        rows = self._rows[first:first + logits.shape[0]]
        params = [r.req.params for r in rows]
        tokens, failed = self._sample_rows(logits, rows)
        picked = None
        if any(p.logprobs for p in params):
            lp = torch.log_softmax(logits.float(), dim=-1)
            picked = lp[torch.arange(len(rows), device=lp.device), torch.tensor(tokens, device=lp.device)].tolist()
        done = []
        for j, (r, tok) in enumerate(zip(rows, tokens)):
            req = r.req
            if j in failed:                         # this request's sampling failed: its error alone
                done.append((first + j, [], "error", failed[j]))
                continue
            if req.params.max_tokens == 0:          # prefilled for its prompt logits only
                done.append((first + j, [], "length", None))
                continue
            req.output_ids.append(tok)
            if req.params.logprobs:
                req.log_probs.append(picked[j])
            if req.params.return_logits:
                req.logits.append(logits[j].float().clone())
            r.last_token = tok
            reason = None
            if stop_hit(req.output_ids, r.stop_ids, req.params.stop_sequences):
                reason = "stop"
            elif len(req.output_ids) >= req.params.max_tokens or \
                    (self.max_seq_len and len(req.prompt) + len(req.output_ids) >= self.max_seq_len):
                reason = "length"
            if reason is None:
                self._emit(req, [tok], None, None)
            else:
                done.append((first + j, [tok], reason, None))
        if done:
            for i, toks, reason, message in done:
                self._finish_request(self._rows[i].req, toks, reason, message)
            self._remove([i for i, _, _, _ in done])

    def _sample_rows(self, logits: torch.Tensor, rows: list) -> tuple[list[int], dict[int, str]]:
        """Each row's next token; a row whose sampling fails is that request's error, not the batch's.
        -> (tokens, {row j: error message})."""
        params, gens = [r.req.params for r in rows], [r.generator for r in rows]
        if all(p.temperature == 0 for p in params):
            return sample(logits, params, gens).tolist(), {}
        # Row by row: a failure after another row has drawn from its generator would otherwise force a redraw
        # and change what a seeded request samples.
        tokens, failed = [0] * len(rows), {}
        for j, r in enumerate(rows):
            try:
                tokens[j] = int(sample(logits[j:j + 1], params[j:j + 1], gens[j:j + 1])[0])
            except Exception as e:  # noqa: BLE001 - one request's sampling failure is that request's error
                failed[j] = f"sampling failed for this request: {type(e).__name__}: {e}"
                self.log(f"request {r.req.request_id}: {failed[j]}")
        return tokens, failed

    # -- leaving the batch ------------------------------------------------------------------------------------
    def _drop(self, indices: list[int], reason: str, message: str | None = None) -> None:
        for i in indices:
            req = self._rows[i].req
            if reason == "cancelled":
                self.log(f"request {req.request_id} cancelled after {len(req.output_ids)} tokens; its row is free")
            self._finish_request(req, [], reason, message)
        self._remove(indices)

    def _remove(self, indices: list[int]) -> None:
        """Take rows out of the batch, keeping the rest packed: the last row moves into each hole."""
        for i in sorted(set(indices), reverse=True):
            last = len(self._rows) - 1
            if i != last:
                self._cache.copy_rows_from(self._cache, [last], [i])
                self._rows[i] = self._rows[last]
            self._rows.pop()

    def _fail(self, rows: list[_Row], exc: BaseException, stage: str) -> None:
        msg = f"generation failed ({stage}): {type(exc).__name__}: {exc}"
        self.log(msg + "\n" + "".join(traceback.format_exception(exc)))
        for r in rows:
            self._finish_request(r.req, [], "error", msg)
        gone = {id(r) for r in rows}
        self._remove([i for i, r in enumerate(self._rows) if id(r) in gone])

    def _finish_request(self, req: Request, tokens: list, reason: str, message: str | None = None) -> None:
        req.finish_reason = reason
        self._emit(req, tokens, reason, message)

    def _emit(self, req: Request, tokens: list, reason, message) -> None:
        if req.emit is None:
            return
        try:
            req.emit(tokens, reason, message)
        except Exception as e:  # noqa: BLE001 - a receiver's failure must not stop the batch
            self.log(f"request {req.request_id}: handing out its tokens failed: {type(e).__name__}: {e}")

    # -- checks -----------------------------------------------------------------------------------------------
    def _stop_ids(self, params: SamplingParams) -> frozenset:
        ids = self.model.network.eos_token_ids if params.stop_token_ids is None else params.stop_token_ids
        return frozenset(int(t) for t in ids)

    def _check(self, req: Request) -> str | None:
        vocab = self.model.network.vocab_size
        if not req.prompt:
            return f"request {req.request_id}: the prompt is empty"
        if min(req.prompt) < 0 or max(req.prompt) >= vocab:
            return f"request {req.request_id}: the prompt has token ids outside [0, {vocab})"
        limit = getattr(self.model, "max_forward_tokens", None)
        if limit and len(req.prompt) > limit:
            return (f"request {req.request_id}: the prompt is {len(req.prompt)} tokens and this executor forwards "
                    f"at most {limit} within its memory budget (plugins/onnx/memory.py); send a shorter prompt or "
                    f"serve with --executor reference")
        if self.max_seq_len and len(req.prompt) >= self.max_seq_len:
            return (f"request {req.request_id}: the prompt is {len(req.prompt)} tokens, max_seq_len is "
                    f"{self.max_seq_len}")
        return None

    # -- the service thread ------------------------------------------------------------------------------------
    def _serve(self, torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)
        while True:
            with self._cv:
                while not self._stopping and not self._queue and not self._cancelled and not self._rows:
                    self._cv.wait(None if self._draining is None else DRAIN_CHECK_S)
                if self._stopping:
                    break
            if self._drain_due():
                self._shut_down()
                continue
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - never let the loop die with requests waiting on it
                self.log(f"scheduler step failed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                rows, self._rows, self._cache = self._rows, [], None
                for r in rows:
                    self._finish_request(r.req, [], "error", f"generation failed: {type(e).__name__}: {e}")
        self._shut_down()

    def _drain_due(self) -> bool:
        if self._draining is None or time.monotonic() < self._next_drain_check:
            return False
        self._next_drain_check = time.monotonic() + DRAIN_CHECK_S
        try:
            return bool(self._draining())
        except Exception:  # noqa: BLE001 - a failing check is not a reason to stop serving
            return False

    def _shut_down(self) -> None:
        for r in self._rows:
            self._finish_request(r.req, [], "cancelled", SHUTDOWN_MESSAGE)
        self._rows = []
        with self._cv:
            queued, self._queue = list(self._queue), collections.deque()
        for req in queued:
            self._finish_request(req, [], "cancelled", SHUTDOWN_MESSAGE)
