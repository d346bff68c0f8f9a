"""preprocessing: Harmony chat rendering + tokenization + request validation.

QUERY is the user's message, rendered as a Harmony conversation (system message with the reasoning effort,
optional developer instructions SYSTEM_PROMPT, optional CHAT_HISTORY JSON, then the user turn and
`<|start|>assistant`), unless RAW_PROMPT is true (then QUERY is tokenized as is, special-token strings included).
Outputs follow TensorRT-LLM's preprocessing names: INPUT_ID, REQUEST_INPUT_LEN, REQUEST_OUTPUT_LEN, STOP_WORDS_IDS
([2, L] layout), OUT_END_ID (the request's END_ID, -1 = no end token, checked against the vocabulary; -1 too when
END_ID is absent, so a caller that sent none passes no end_id on and the engine uses its default stop tokens).
The work itself is model_repo.preprocess.prepare, which the tensorrt_llm_bls model runs in its own process.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repo.harmony import render_chat
from model_repo.preprocess import CLIENT_ERRORS, prepare
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
            except CLIENT_ERRORS as e:
                responses.append(pb_utils.InferenceResponse(error=invalid(str(e))))
            except Exception as e:  # noqa: BLE001 - every failure becomes an error response
                responses.append(pb_utils.InferenceResponse(error=error_of(e)))
        return responses

    def _one(self, request):
        p = prepare(lambda name: get(request, name), self.tokenizer, self.max_seq_len, self.default_effort)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("INPUT_ID", np.asarray(p.ids, dtype=np.int32).reshape(1, -1)),
            pb_utils.Tensor("REQUEST_INPUT_LEN", np.asarray([[len(p.ids)]], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", np.asarray([[p.max_tokens]], dtype=np.int32)),
            pb_utils.Tensor("STOP_WORDS_IDS", p.stop_words[None]),
            pb_utils.Tensor("OUT_END_ID", np.asarray([[p.end_id]], dtype=np.int32)),
        ])
