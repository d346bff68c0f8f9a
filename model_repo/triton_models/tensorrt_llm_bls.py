"""tensorrt_llm_bls: the front model clients talk to (the `ensemble` model of the repository forwards to it).

Inputs and outputs carry the names TensorRT-LLM's ensemble / BLS models use (text_input, max_tokens, stream,
temperature, top_p, top_k, seed, stop_words, end_id, ... -> text_output, num_input_tokens, num_output_tokens), plus
Harmony extras: reasoning_effort, system_prompt, chat_history (JSON), raw_prompt -> analysis_output, finish_reason.
Upstream's return_log_probs -> output_log_probs [1, 1, n] and return_context_logits -> context_logits
[1, prompt_len, vocab] are passed through from `tensorrt_llm` (with raw_prompt the prompt is the text's tokens, so
these are what an engine-regression suite needs); output_ids [1, 1, n] (the generated token ids, as the
`tensorrt_llm` model names them) comes with every response that carries tokens.

Per request (each in its own thread, so requests overlap and the tensorrt_llm model batches them in flight):
validate the sampling inputs, preprocess (render + tokenize + validate: model_repo.preprocess, the code the
`preprocessing` model runs, here in this process: one round trip through tritonserver fewer), call `tensorrt_llm` with
streaming on, and turn its token responses into text with the Harmony stream decoder (the same code the
`postprocessing` model runs, applied incrementally: a model call per token would only add latency). With stream=true
each response carries the tokens that arrived since the previous one (one per token while the server keeps up,
several under load, so a busy server sends fewer responses instead of falling behind; its text may be empty while
a Harmony header is being read); the last response carries the flag final. Otherwise one response holds the whole answer. A client that cancels or
disconnects is noticed within ~0.1 s (a failed send is noticed at once); the generation is then stopped in
`tensorrt_llm` by a `stop` request.
"""

import os
import queue
import threading
import time
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repo import requests as rq
from model_repo.harmony import HarmonyStreamDecoder, render_chat
from model_repo.preprocess import CLIENT_ERRORS, prepare
from model_repo.tokenizer import load_tokenizer
from model_repo.triton_models.common import (error_of, get, internal, invalid, log_error, log_info, model_params,
                                             resolve_engine_dir)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CANCEL_CHECK_S = 0.1
# preprocessing input (model_repo.preprocess.prepare's names) -> front input
FRONT_OF = {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens", "STOP_WORDS_DICT": "stop_words",
            "END_ID": "end_id", "REASONING_EFFORT": "reasoning_effort", "SYSTEM_PROMPT": "system_prompt",
            "CHAT_HISTORY": "chat_history", "RAW_PROMPT": "raw_prompt"}


class TritonPythonModel:
    def initialize(self, args):
        _, p = model_params(args)
        self.llm_model = p.get("tensorrt_llm_model_name", "tensorrt_llm")
        self.engine_dir = resolve_engine_dir(args, p["engine_dir"])
        self.tokenizer = load_tokenizer(self.engine_dir, p.get("tokenizer", "auto"))
        self.max_seq_len = int(p["max_seq_len"])
        self.default_effort = p.get("default_reasoning_effort", "medium")
        render_chat(self.tokenizer, "warm up", self.default_effort)     # loads the Harmony encoding (~1 s) now
        log_info(f"tensorrt_llm_bls: preprocessing in process -> {self.llm_model}, {self.tokenizer.kind} tokenizer")
        # Requests being handled: thread name -> what it is doing (logged if the model unloads with some left).
        self._inflight: dict[str, str] = {}
        self._inflight_lock = threading.Lock()

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._handle, args=(request,), daemon=True,
                             name=f"bls-request-{uuid.uuid4().hex[:8]}").start()
        return None

    def finalize(self):
        with self._inflight_lock:
            left = dict(self._inflight)
        if left:
            log_error(f"tensorrt_llm_bls: unloading with {len(left)} request(s) in flight: "
                      + "; ".join(f"{k}: {v}" for k, v in left.items()))
        else:
            log_info("tensorrt_llm_bls: unloading, no request in flight")

    def _stage(self, what: str | None) -> None:
        name = threading.current_thread().name
        with self._inflight_lock:
            if what is None:
                self._inflight.pop(name, None)
            else:
                self._inflight[name] = f"{what} (since {time.strftime('%H:%M:%S')})"

    # ---------------------------------------------------------------------------------------------------
    def _handle(self, request):
        self._stage("starting")
        try:
            sender = request.get_response_sender()
            try:
                self._run(request, sender)
            except CLIENT_ERRORS as e:
                _send(sender, pb_utils.InferenceResponse(error=invalid(str(e))), FINAL)
            except BackendCrashed as e:
                log_error(f"tensorrt_llm_bls: {e}")
                _send(sender, pb_utils.InferenceResponse(error=internal(str(e))), FINAL)
            except Exception as e:  # noqa: BLE001 - every failure is an error response; the model keeps serving
                log_error(f"tensorrt_llm_bls: {type(e).__name__}: {e}")
                _send(sender, pb_utils.InferenceResponse(error=error_of(e)), FINAL)
        finally:
            self._stage(None)

    def _run(self, request, sender):
        text_input = get(request, "text_input")
        if text_input is None:
            raise rq.RequestError("text_input is required")
        rq.batch_size_one(text_input, "text_input")
        stream = rq.boolean(get(request, "stream"), "stream")
        s = rq.sampling(get(request, "temperature"), get(request, "top_p"), get(request, "top_k"), get(request, "seed"))
        rq.beam_width(get(request, "beam_width"))
        raw = rq.boolean(get(request, "raw_prompt"), "raw_prompt")
        want_lp = rq.boolean(get(request, "return_log_probs"), "return_log_probs")
        want_ctx = rq.boolean(get(request, "return_context_logits"), "return_context_logits")

        # 1. preprocessing, in this process: what the preprocessing model runs (model_repo.preprocess), without
        # a round trip through tritonserver to its stub before the first token
        self._stage("preprocessing")
        pre = prepare(lambda name: get(request, FRONT_OF[name]), self.tokenizer, self.max_seq_len, self.default_effort)
        n_in = len(pre.ids)

        # 2. tensorrt_llm, streamed token by token
        llm_in = [pb_utils.Tensor("input_ids", np.asarray(pre.ids, dtype=np.int32).reshape(1, -1)),
                  pb_utils.Tensor("input_lengths", np.array([[n_in]], dtype=np.int32)),
                  pb_utils.Tensor("request_output_len", np.array([[pre.max_tokens]], dtype=np.int32)),
                  pb_utils.Tensor("stop_words_list", pre.stop_words[None].astype(np.int32)),
                  pb_utils.Tensor("temperature", np.array([[s.temperature]], dtype=np.float32)),
                  pb_utils.Tensor("runtime_top_k", np.array([[s.top_k]], dtype=np.int32)),
                  pb_utils.Tensor("runtime_top_p", np.array([[s.top_p]], dtype=np.float32)),
                  pb_utils.Tensor("streaming", np.array([[True]], dtype=np.bool_))]
        if s.seed is not None:
            llm_in.append(pb_utils.Tensor("seed", np.array([[s.seed]], dtype=np.uint64)))
        if get(request, "end_id") is not None:          # absent: the engine's default stop tokens
            llm_in.append(pb_utils.Tensor("end_id", np.array([[pre.end_id]], dtype=np.int32)))
        wanted = ["output_ids", "finish_reason"]
        if want_lp:
            llm_in.append(pb_utils.Tensor("return_log_probs", np.array([[True]], dtype=np.bool_)))
            wanted.append("output_log_probs")
        if want_ctx:
            llm_in.append(pb_utils.Tensor("return_context_logits", np.array([[True]], dtype=np.bool_)))
            wanted.append("context_logits")
        rid = f"bls-{uuid.uuid4().hex}"
        self._stage(f"generating {rid}")
        responses = pb_utils.InferenceRequest(model_name=self.llm_model, inputs=llm_in, request_id=rid,
                                              requested_output_names=wanted).exec(decoupled=True)

        decoder = HarmonyStreamDecoder(self.tokenizer, raw=raw)
        final_text, analysis_text = [], []
        all_ids, all_lps, context = [], [], None
        n_out, reason, cancelled, done = 0, None, False, False
        next_check = time.monotonic() + CANCEL_CHECK_S
        for resp in _arrivals(responses, rid):
            if resp.has_error():
                if not cancelled:
                    _send(sender, pb_utils.InferenceResponse(error=resp.error()), FINAL)
                done = True
                continue            # drain the iterator
            if cancelled or done:
                continue
            outs = resp.outputs
            tokens = [int(x) for x in outs["output_ids"].reshape(-1)] if "output_ids" in outs else []
            if "finish_reason" in outs:
                r = outs["finish_reason"].reshape(-1)[0]
                reason = r.decode() if isinstance(r, bytes) else str(r)
                if reason.startswith("error"):        # this request failed (or the server is stopping)
                    message = reason.partition(":")[2].strip() or "generation failed"
                    if not cancelled:
                        _send(sender, pb_utils.InferenceResponse(error=internal(message)), FINAL)
                    done = True
                    continue
            lps = [float(x) for x in outs["output_log_probs"].reshape(-1)] if "output_log_probs" in outs else []
            ctx = outs.get("context_logits")
            if ctx is not None:
                context = ctx.reshape(ctx.shape[-2], ctx.shape[-1])
            all_ids += tokens
            all_lps += lps
            n_out += len(tokens)
            d = decoder.feed(tokens)
            if reason is not None:
                tail = decoder.finish()
                d.final += tail.final
                d.analysis += tail.analysis
            now = time.monotonic()
            if now >= next_check:      # asking the server is a round trip: a few times a second is enough
                next_check = now + CANCEL_CHECK_S
                if request.is_cancelled():
                    cancelled = True
                    self._stage(f"client cancelled: stopping {rid}")
                    self._stop(rid)
                    self._stage(f"client cancelled: draining {rid}")
                    continue
            if stream:
                if tokens or reason is not None:
                    extra = _Extra(tokens, lps if want_lp else None, context if ctx is not None else None)
                    ok = _send(sender, self._response(d.final, d.analysis, n_in, n_out, reason, extra),
                               FINAL if reason is not None else 0)
                    if not ok:
                        cancelled = True
                        self._stage(f"send failed: stopping {rid}")
                        self._stop(rid)
                        self._stage(f"send failed: draining {rid}")
                    elif reason is not None:
                        done = True
            else:
                final_text.append(d.final)
                analysis_text.append(d.analysis)
        self._stage(f"finishing {rid}")
        if done:
            return
        if cancelled:
            _send(sender, None, FINAL)
            return
        if reason is None:     # the stream ended without a finish reason (e.g. the model was unloaded)
            tail = decoder.finish()
            final_text.append(tail.final)
            analysis_text.append(tail.analysis)
            reason = "stop"
            if stream:
                _send(sender, self._response(tail.final, tail.analysis, n_in, n_out, reason), FINAL)
                return
        extra = _Extra(all_ids, all_lps if want_lp else None, context)
        _send(sender, self._response("".join(final_text), "".join(analysis_text), n_in, n_out, reason, extra), FINAL)

    def _stop(self, rid: str) -> None:
        """Stop the generation of request `rid` in tensorrt_llm (its client has gone)."""
        try:
            for _ in pb_utils.InferenceRequest(model_name=self.llm_model, request_id=rid,
                                               inputs=[pb_utils.Tensor("stop", np.array([[True]], dtype=np.bool_))],
                                               requested_output_names=["output_ids"]).exec(decoupled=True):
                pass
        except Exception as e:  # noqa: BLE001
            log_error(f"tensorrt_llm_bls: could not stop {rid}: {e}")

    @staticmethod
    def _response(final: str, analysis: str, n_in: int, n_out: int, reason, extra: "_Extra | None" = None):
        out = [pb_utils.Tensor("text_output", np.array([[final.encode("utf-8")]], dtype=np.object_)),
               pb_utils.Tensor("analysis_output", np.array([[analysis.encode("utf-8")]], dtype=np.object_)),
               pb_utils.Tensor("num_input_tokens", np.array([[n_in]], dtype=np.int32)),
               pb_utils.Tensor("num_output_tokens", np.array([[n_out]], dtype=np.int32))]
        if extra is not None:
            if extra.ids:
                out.append(pb_utils.Tensor("output_ids", np.asarray(extra.ids, dtype=np.int32).reshape(1, 1, -1)))
            if extra.log_probs is not None and (extra.ids or extra.log_probs):
                out.append(pb_utils.Tensor("output_log_probs",
                                           np.asarray(extra.log_probs, dtype=np.float32).reshape(1, 1, -1)))
            if extra.context_logits is not None:
                out.append(pb_utils.Tensor("context_logits",
                                           np.ascontiguousarray(extra.context_logits, dtype=np.float32)[None]))
        if reason is not None:
            out.append(pb_utils.Tensor("finish_reason", np.array([[reason.encode()]], dtype=np.object_)))
        return pb_utils.InferenceResponse(output_tensors=out)


class _Arrived:
    """tensorrt_llm responses that arrived together, as one: their output_ids and output_log_probs joined."""

    def __init__(self, responses: list):
        self.outputs: dict = {}
        ids, lps = [], []
        for resp in responses:
            for t in resp.output_tensors():
                a = t.as_numpy()
                if t.name() == "output_ids":
                    ids.append(a.reshape(-1))
                elif t.name() == "output_log_probs":
                    lps.append(a.reshape(-1))
                elif t.name() not in self.outputs or t.name() == "finish_reason":
                    self.outputs[t.name()] = a
        if ids:
            self.outputs["output_ids"] = np.concatenate(ids)
        if lps:
            self.outputs["output_log_probs"] = np.concatenate(lps)

    @staticmethod
    def has_error() -> bool:
        return False


_END = object()


class BackendCrashed(RuntimeError):
    """The model this request waits on died (serve-engine's watchdog wrote the crash file): its message names it."""


def crash_message() -> str | None:
    """The watchdog's message if a model's backend process died (model_repo.requests.CRASH_FILE_ENV)."""
    path = os.environ.get(rq.CRASH_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "a model's backend process died"
    except OSError:
        return None


def _arrivals(responses, rid: str, crashed=crash_message):
    """The responses of a decoupled call, read on their own thread; each item yielded is everything that arrived
    while the previous one was being handled (joined by _Arrived; an error response stays on its own). Under
    load the request's thread thus answers many tokens with one response instead of falling behind. While
    nothing arrives, `crashed()` is asked every CANCEL_CHECK_S: a message raises BackendCrashed (the model's
    process is gone and no response will ever come)."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read():
        try:
            for resp in responses:
                inbox.put(resp)
        except BaseException as e:  # noqa: BLE001 - raised again on the request's thread
            inbox.put(e)
        finally:
            inbox.put(_END)
    threading.Thread(target=read, daemon=True, name=f"bls-read-{rid[-8:]}").start()
    while True:
        try:
            items = [inbox.get(timeout=CANCEL_CHECK_S)]
        except queue.Empty:
            message = crashed()
            if message:
                raise BackendCrashed(message) from None
            continue
        while True:
            try:
                items.append(inbox.get_nowait())
            except queue.Empty:
                break
        run = []
        for item in items:
            if item is _END or isinstance(item, BaseException) or item.has_error():
                if run:
                    yield _Arrived(run)
                    run = []
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
            else:
                run.append(item)
        if run:
            yield _Arrived(run)


class _Extra:
    """Token-level outputs of one response: generated ids, their logprobs (when asked), the prompt's logits."""

    def __init__(self, ids, log_probs=None, context_logits=None):
        self.ids, self.log_probs, self.context_logits = list(ids), log_probs, context_logits


def _send(sender, response, flags) -> bool:
    try:
        if response is None:
            sender.send(flags=flags)
        else:
            sender.send(response, flags=flags)
        return True
    except Exception as e:  # noqa: BLE001 - the client has gone
        log_error(f"tensorrt_llm_bls: sending a response failed: {e}")
        return False
