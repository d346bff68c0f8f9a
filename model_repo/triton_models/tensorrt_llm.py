"""tensorrt_llm: a decoupled Python-backend model that runs the engine with in-flight batching.

Tensor names follow TensorRT-LLM's `tensorrt_llm` model (input_ids, input_lengths, request_output_len, end_id,
stop_words_list, temperature, runtime_top_k, runtime_top_p, seed, streaming, stop, return_log_probs,
return_context_logits -> output_ids, sequence_length, output_log_probs, context_logits). output_log_probs
[1, 1, n] holds the logprob of each generated token of the response (raw distribution, before temperature);
context_logits [1, prompt_len, vocab] the prompt's logits, in the first response (a prompt whose logits exceed
requests.MAX_CONTEXT_LOGITS_BYTES is refused). execute() only queues requests; a scheduler thread (model_repo.inflight) admits them into the
running batch between decode steps and sends responses as tokens come: with streaming=true one response per step
holding the new token(s), else one response holding all of them. A request with `stop`=true cancels the running
request with the same request id (what the BLS model sends when its client goes away); a client that cancels or
disconnects is noticed at the next step.
"""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repo import requests as rq
from model_repo.backends import make_backend
from model_repo.inflight import GenRequest
from model_repo.triton_models.common import (error_of, get, invalid, log_error, log_info, log_warn, model_params,
                                             resolve_engine_dir)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        t0 = time.monotonic()
        _, p = model_params(args)
        self.engine_dir = resolve_engine_dir(args, p["engine_dir"])
        self.max_seq_len = int(p["max_seq_len"])
        kind = p.get("backend", "auto")
        self.backend = make_backend(self.engine_dir, kind, max_batch_size=int(p["max_num_sequences"]),
                                    max_seq_len=self.max_seq_len, options_file=p.get("llm_api_options_file") or None,
                                    cpu_threads=int(p.get("cpu_threads") or 0), log=log_warn)
        self.vocab_size = self.backend.vocab_size
        self.max_context_logits_bytes = int(p.get("max_context_logits_bytes") or rq.MAX_CONTEXT_LOGITS_BYTES)
        self._ids_in_flight: set[str] = set()
        self._ids_lock = threading.Lock()
        self.default_stop_ids = tuple(int(x) for x in p.get("default_stop_ids", "").split(",") if x.strip()) \
            or self.backend.default_stop_ids
        log_info(f"tensorrt_llm: {self.backend.name} backend, engine {self.engine_dir}, in-flight batch "
                 f"{p['max_num_sequences']}, max_seq_len {self.max_seq_len}, default stop ids {self.default_stop_ids}; "
                 f"loaded and warmed up in {time.monotonic() - t0:.1f} s")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._submit(request, sender)
            except rq.RequestError as e:
                _send_error(sender, invalid(str(e)))
            except Exception as e:  # noqa: BLE001
                log_error(f"tensorrt_llm: request failed: {e}")
                _send_error(sender, error_of(e))
        return None

    def _submit(self, request, sender):
        if rq.boolean(get(request, "stop"), "stop"):
            rid = request.request_id()
            if not rid:
                raise rq.RequestError("a stop request needs the request id of the request to stop")
            self.backend.cancel(rid)
            sender.send(flags=FINAL)
            return
        ids_arr = get(request, "input_ids")
        if ids_arr is None:
            raise rq.RequestError("input_ids is required")
        rq.batch_size_one(ids_arr, "input_ids")
        ids = rq.token_ids(ids_arr, "input_ids", self.vocab_size)
        n_in = rq.scalar(get(request, "input_lengths"), "input_lengths", default=len(ids))
        if n_in is not None and 0 < int(n_in) < len(ids):
            ids = ids[:int(n_in)]
        max_tokens = rq.output_length(get(request, "request_output_len"), len(ids), self.max_seq_len)
        rq.beam_width(get(request, "beam_width"))
        s = rq.sampling(get(request, "temperature"), get(request, "runtime_top_p"), get(request, "runtime_top_k"),
                        get(request, "seed"))
        end = get(request, "end_id")
        end_val = rq.scalar(end, "end_id")
        end_id = None if end_val is None or int(end_val) < 0 else rq.end_id(end, self.vocab_size)
        stop = rq.StopCriteria.build(self.default_stop_ids, end_id, rq.unpack_stop_words(get(request, "stop_words_list")))
        streaming = rq.boolean(get(request, "streaming"), "streaming")
        want_lp = rq.boolean(get(request, "return_log_probs"), "return_log_probs")
        want_ctx = rq.boolean(get(request, "return_context_logits"), "return_context_logits")
        if want_ctx:
            rq.check_context_logits_size(len(ids), self.vocab_size, self.max_context_logits_bytes)
        rid = request.request_id() or f"anon-{id(request)}"
        with self._ids_lock:
            # Cancellation is by request id: a second request under an id in flight would share its fate.
            if rid in self._ids_in_flight:
                raise rq.RequestError(f"request id {rid!r} is already in flight; give each request its own id")
            self._ids_in_flight.add(rid)
        out = _Responder(sender, streaming, on_final=lambda: self._release_id(rid))
        out.req = GenRequest(rid, ids, max_tokens, s.temperature, s.top_k, s.top_p, s.seed, stop,
                             emit=out.emit, is_cancelled=out.is_cancelled, return_log_probs=want_lp,
                             return_context_logits=want_ctx)
        try:
            self.backend.submit(out.req)
        except BaseException:
            self._release_id(rid)
            raise

    def _release_id(self, rid: str) -> None:
        with self._ids_lock:
            self._ids_in_flight.discard(rid)

    def finalize(self):
        self.backend.shutdown()


class _Responder:
    """Turns batcher events into Triton responses for one request."""

    def __init__(self, sender, streaming: bool, on_final=None):
        self.on_final = on_final
        self.sender = sender
        self.streaming = streaming
        self.req = None                # the GenRequest: its log_probs / context_logits (when asked for)
        self.tokens: list[int] = []
        self.sent_log_probs = 0
        self.sent_context = False
        self.lock = threading.Lock()
        self.next_check = time.monotonic() + 0.1

    def is_cancelled(self) -> bool:
        # Asking the server costs a round trip; a few times a second is soon enough.
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + 0.1
        return self.sender.is_cancelled()

    def emit(self, tokens, reason, message):
        if reason is not None and self.on_final is not None:
            self.on_final()
        try:
            self._emit(tokens, reason, message)
        finally:
            if reason is not None:
                self._release()

    def _release(self) -> None:
        """A finished request lets go of what it held (prompt logits can be hundreds of MB) at once, rather than
        whenever the garbage collector breaks the request <-> responder cycle."""
        with self.lock:
            req, self.req, self.tokens = self.req, None, []
            if req is not None:
                req.context_logits, req.log_probs, req.emit, req.is_cancelled = None, [], None, None

    def _emit(self, tokens, reason, message):
        with self.lock:
            self.tokens.extend(tokens)
            if reason == "error" or (reason == "cancelled" and message):
                # A failure of this request, or the server stopping under it: an error for a direct client,
                # then a final response whose finish_reason says "error: ..." (a BLS caller never sees error
                # responses of a decoupled callee, only its tensors).
                message = message or "generation failed"
                try:
                    self.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        message, pb_utils.TritonError.INTERNAL)))
                    self.sender.send(self._response([], "error: " + message), flags=FINAL)
                except Exception as e:  # noqa: BLE001 - the client may be gone
                    log_error(f"tensorrt_llm: could not send an error response: {e}")
                return
            if reason == "cancelled":
                self.sender.send(flags=FINAL)
                return
            if self.streaming:
                if tokens:
                    self.sender.send(self._response(tokens, reason), flags=FINAL if reason else 0)
                elif reason:
                    self.sender.send(flags=FINAL)
            elif reason:
                self.sender.send(self._response(self.tokens, reason), flags=FINAL)

    def _response(self, tokens, reason):
        ids = np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1)
        out = [pb_utils.Tensor("output_ids", ids),
               pb_utils.Tensor("sequence_length", np.asarray([[ids.shape[-1]]], dtype=np.int32))]
        req = self.req
        if req is not None and req.return_log_probs:
            # The batcher appended these tokens' logprobs before emitting them; a response covers the next len(tokens).
            n = len(tokens) if self.streaming else len(req.log_probs)
            start = self.sent_log_probs if self.streaming else 0
            lp = np.asarray(req.log_probs[start:start + n], dtype=np.float32).reshape(1, 1, -1)
            self.sent_log_probs = start + n
            out.append(pb_utils.Tensor("output_log_probs", lp))
        if req is not None and req.return_context_logits and not self.sent_context and req.context_logits is not None:
            out.append(pb_utils.Tensor("context_logits", np.ascontiguousarray(req.context_logits, dtype=np.float32)[None]))
            self.sent_context = True
            req.context_logits = None          # sent once: the response holds it now, nothing else should
        if reason:
            out.append(pb_utils.Tensor("finish_reason", np.array([[reason.encode()]], dtype=np.object_)))
        return pb_utils.InferenceResponse(output_tensors=out)


def _send_error(sender, error):
    # The error, then an empty final response: a BLS caller's response iterator (Python backend 2.51) never
    # ends on an error response that carries the final flag itself, and would wait forever.
    try:
        sender.send(pb_utils.InferenceResponse(error=error))
        sender.send(flags=FINAL)
    except Exception as e:  # noqa: BLE001 - the client may be gone
        log_error(f"tensorrt_llm: could not send an error response: {e}")
