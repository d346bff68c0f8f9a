"""tensorrt_llm: a decoupled Python-backend model that runs the engine with in-flight batching.

Tensor names follow TensorRT-LLM's `tensorrt_llm` model (input_ids, input_lengths, request_output_len, end_id,
stop_words_list, temperature, runtime_top_k, runtime_top_p, seed, streaming, stop, return_log_probs,
return_context_logits -> output_ids, sequence_length, output_log_probs, context_logits). output_log_probs
[1, 1, n] holds the logprob of each generated token of the response (raw distribution, before temperature);
context_logits [1, prompt_len, vocab] the prompt's logits, in the first response (a prompt whose logits exceed
requests.MAX_CONTEXT_LOGITS_BYTES is refused). end_id absent: the engine's default stop tokens; end_id -1: no end
token (upstream's meaning: decode to request_output_len or a stop word).

execute() only queues requests; the backend's scheduler thread (runtime.scheduler) admits them into the running
batch between decode steps. Responses leave from one writer thread (ResponseWriter), never from the scheduler's,
so a decode step never waits on Triton: with streaming=true a response holds the token(s) generated since the
previous one (one per step for a few streams at moderate speed; several with many streams live or a very fast
model, see model_repo/responses.py), else one response holds them all. A request with `stop`=true cancels the running request with the same request id (what the
BLS model sends when its client goes away); the writer also notices clients that cancel or disconnect.
"""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repo import requests as rq
from model_repo.backends import make_backend
from model_repo.responses import MIN_INTERVAL_S, ResponseWriter
from runtime.sampling import SamplingParams
from runtime.scheduler import Request
from model_repo.triton_models.common import (error_of, get, invalid, log_error, log_info, log_warn, model_params,
                                             resolve_engine_dir)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        t0 = time.monotonic()
        _, p = model_params(args)
        self.engine_dir = resolve_engine_dir(args, p["engine_dir"])
        self.max_seq_len = int(p["max_seq_len"])
        kind = p.get("executor") or p.get("backend") or "auto"      # "backend": repositories written before
        self.backend = make_backend(self.engine_dir, kind, max_batch_size=int(p["max_num_sequences"]),
                                    max_seq_len=self.max_seq_len, options_file=p.get("llm_api_options_file") or None,
                                    cpu_threads=int(p.get("cpu_threads") or 0), log=log_warn)
        self.vocab_size = self.backend.vocab_size
        self.max_context_logits_bytes = int(p.get("max_context_logits_bytes") or rq.MAX_CONTEXT_LOGITS_BYTES)
        self._ids_in_flight: set[str] = set()
        self._ids_lock = threading.Lock()
        self.default_stop_ids = tuple(int(x) for x in p.get("default_stop_ids", "").split(",") if x.strip()) \
            or self.backend.default_stop_ids
        interval = p.get("stream_interval_ms")             # absent: a repository written before it existed
        self.writer = ResponseWriter(self.backend.cancel, log=log_error,
                                     min_interval_s=MIN_INTERVAL_S if not interval else float(interval) / 1000)
        log_info(f"tensorrt_llm: {self.backend.choice.line()}, engine {self.engine_dir}, in-flight batch "
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
        end_id = rq.end_id(get(request, "end_id"), self.vocab_size)
        stop = rq.StopCriteria.build(self.default_stop_ids, end_id, rq.unpack_stop_words(get(request, "stop_words_list")))
        streaming = rq.boolean(get(request, "streaming"), "streaming")
        want_lp = rq.boolean(get(request, "return_log_probs"), "return_log_probs")
        want_ctx = rq.boolean(get(request, "return_context_logits"), "return_context_logits")
        if want_ctx:
            rq.check_context_logits_size(len(ids), self.vocab_size, self.max_context_logits_bytes)
        rid = request.request_id() or f"anon-{id(request)}"
        params = SamplingParams(max_tokens=max_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                seed=s.seed, stop_token_ids=tuple(sorted(stop.tokens)),
                                stop_sequences=tuple(tuple(q) for q in stop.sequences), logprobs=want_lp,
                                prompt_logits=want_ctx)
        req = Request(rid, ids, params)
        with self._ids_lock:
            # Cancellation is by request id: a second request under an id in flight would share its fate.
            if rid in self._ids_in_flight:
                raise rq.RequestError(f"request id {rid!r} is already in flight; give each request its own id")
            self._ids_in_flight.add(rid)
        req.emit = self.writer.add(_Responder(sender, streaming, req, on_final=lambda: self._release_id(rid)))
        try:
            self.backend.submit(req)
        except BaseException:
            self._release_id(rid)
            raise

    def _release_id(self, rid: str) -> None:
        with self._ids_lock:
            self._ids_in_flight.discard(rid)

    def finalize(self):
        self.backend.shutdown()
        self.writer.stop()


class _Responder:
    """The Triton responses of one request, built from what the scheduler produced since the last one."""

    def __init__(self, sender, streaming: bool, req: Request, on_final=None):
        self.on_final = on_final         # called once the request's last response is on its way
        self.sender = sender
        self.streaming = streaming
        self.req = req
        self.rid = req.request_id
        self.sent_log_probs = 0
        self.sent_context = False

    def is_cancelled(self) -> bool:
        return self.sender.is_cancelled()

    def send(self, tokens: list, reason, message) -> None:
        """tokens: generated since the last call; reason: None while running. Runs on the writer thread."""
        if reason is not None and self.on_final is not None:
            self.on_final()
        try:
            self._send(tokens, reason, message)
        finally:
            if reason is not None:
                self._release()

    def _release(self) -> None:
        """A finished request lets go of what it held (prompt logits can be hundreds of MB) at once, rather than
        whenever the garbage collector breaks the request <-> responder cycle."""
        req = self.req
        req.context_logits, req.log_probs, req.logits, req.emit = None, [], [], None

    def _send(self, tokens: list, reason, message) -> None:
        if reason == "error" or (reason == "cancelled" and message):
            # A failure of this request, or the server stopping under it: an error for a direct client, then a
            # final response whose finish_reason says "error: ..." (a BLS caller never sees error responses of a
            # decoupled callee, only its tensors).
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
            self.sender.send(self._response(self.req.output_ids, reason), flags=FINAL)

    def _response(self, tokens, reason):
        ids = np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1)
        out = [pb_utils.Tensor("output_ids", ids),
               pb_utils.Tensor("sequence_length", np.asarray([[ids.shape[-1]]], dtype=np.int32))]
        req = self.req
        if req.params.logprobs:
            # The scheduler appended these tokens' logprobs before handing the tokens out.
            start = self.sent_log_probs if self.streaming else 0
            n = len(tokens) if self.streaming else len(req.log_probs)
            lp = np.asarray(req.log_probs[start:start + n], dtype=np.float32).reshape(1, 1, -1)
            self.sent_log_probs = start + n
            out.append(pb_utils.Tensor("output_log_probs", lp))
        if req.params.prompt_logits and not self.sent_context and req.context_logits is not None:
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
