"""preprocessing: Harmony chat rendering + tokenization + request validation.

QUERY is the user's message, rendered as a Harmony conversation (system message with the reasoning effort,
optional developer instructions SYSTEM_PROMPT, optional CHAT_HISTORY JSON, then the user turn and
`<|start|>assistant`), unless RAW_PROMPT is true (then QUERY is tokenized as is, special-token strings included).
Outputs follow TensorRT-LLM's preprocessing names: INPUT_ID, REQUEST_INPUT_LEN, REQUEST_OUTPUT_LEN, STOP_WORDS_IDS
([2, L] layout), OUT_END_ID (the request's END_ID, -1 = no end token, checked against the vocabulary; -1 too when
END_ID is absent, so a caller that sent none passes no end_id on and the engine uses its default stop tokens).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repo import requests as rq
from model_repo.harmony import HarmonyRequestError, parse_history, render_chat
from model_repo.tokenizer import load_tokenizer
from model_repo.triton_models.common import error_of, get, invalid, log_info, model_params, resolve_engine_dir


class TritonPythonModel:
    def initialize(self, args):
        _, p = model_params(args)
        self.engine_dir = resolve_engine_dir(args, p["engine_dir"])
        self.tokenizer = load_tokenizer(self.engine_dir, p.get("tokenizer", "auto"))
        self.max_seq_len = int(p["max_seq_len"])
        self.default_effort = p.get("default_reasoning_effort", "medium")
        # Load the Harmony encoding now (about a second), not on the first request.
        render_chat(self.tokenizer, "warm up", self.default_effort)
        log_info(f"preprocessing: {self.tokenizer.kind} tokenizer ({self.tokenizer.vocab_size} tokens), "
                 f"max_seq_len {self.max_seq_len}, engine {self.engine_dir}")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except (rq.RequestError, HarmonyRequestError) as e:
                responses.append(pb_utils.InferenceResponse(error=invalid(str(e))))
            except Exception as e:  # noqa: BLE001 - every failure becomes an error response
                responses.append(pb_utils.InferenceResponse(error=error_of(e)))
        return responses

    def _one(self, request):
        query = get(request, "QUERY")
        if query is None:
            raise rq.RequestError("text_input (QUERY) is required")
        rq.batch_size_one(query, "text_input")
        text = rq.text(query, "text_input")
        raw = rq.boolean(get(request, "RAW_PROMPT"), "raw_prompt")
        if raw:
            ids = self.tokenizer.encode(text)
        else:
            effort = rq.text(get(request, "REASONING_EFFORT"), "reasoning_effort", required=False) or self.default_effort
            system = rq.text(get(request, "SYSTEM_PROMPT"), "system_prompt", required=False, allow_empty=True)
            history = parse_history(rq.text(get(request, "CHAT_HISTORY"), "chat_history", required=False,
                                            allow_empty=True))
            ids = render_chat(self.tokenizer, text, effort, system or None, history)
        if not ids:
            raise rq.RequestError("text_input tokenizes to nothing")
        max_tokens = rq.output_length(get(request, "REQUEST_OUTPUT_LEN"), len(ids), self.max_seq_len)
        stop_seqs = [self.tokenizer.encode(w) for w in rq.texts(get(request, "STOP_WORDS_DICT"), "stop_words")]
        end = rq.end_id(get(request, "END_ID"), self.tokenizer.vocab_size)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("INPUT_ID", np.asarray(ids, dtype=np.int32).reshape(1, -1)),
            pb_utils.Tensor("REQUEST_INPUT_LEN", np.asarray([[len(ids)]], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", np.asarray([[max_tokens]], dtype=np.int32)),
            pb_utils.Tensor("STOP_WORDS_IDS", rq.pack_stop_words([s for s in stop_seqs if s])[None]),
            pb_utils.Tensor("OUT_END_ID", np.asarray([[rq.NO_END_ID if end is None else end]], dtype=np.int32)),
        ])
