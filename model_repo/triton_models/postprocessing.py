"""postprocessing: detokenization and the Harmony channels.

TOKENS_BATCH [batch, beams, tokens] (generated ids, prompt excluded) and SEQUENCE_LENGTH [batch, beams] ->
OUTPUT (the `final` channel text, TensorRT-LLM's name) and ANALYSIS_OUTPUT (analysis / commentary text).
RAW=true skips the Harmony parsing (every token's text, special tokens included, is OUTPUT).
Stateless: it decodes whole completions. The BLS model streams through the same decoder
(model_repo.harmony.HarmonyStreamDecoder) incrementally, so streamed and whole answers agree.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repo import requests as rq
from model_repo.harmony import decode_completion
from model_repo.tokenizer import load_tokenizer
from model_repo.triton_models.common import error_of, get, invalid, model_params, resolve_engine_dir


class TritonPythonModel:
    def initialize(self, args):
        _, p = model_params(args)
        self.engine_dir = resolve_engine_dir(args, p["engine_dir"])
        self.tokenizer = load_tokenizer(self.engine_dir, p.get("tokenizer", "auto"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except rq.RequestError as e:
                responses.append(pb_utils.InferenceResponse(error=invalid(str(e))))
            except Exception as e:  # noqa: BLE001
                responses.append(pb_utils.InferenceResponse(error=error_of(e)))
        return responses

    def _one(self, request):
        tokens = get(request, "TOKENS_BATCH")
        if tokens is None:
            raise rq.RequestError("TOKENS_BATCH is required")
        tokens = np.asarray(tokens)
        if tokens.ndim == 2:
            tokens = tokens[:, None, :]
        if tokens.ndim != 3:
            raise rq.RequestError(f"TOKENS_BATCH must be [batch, beams, tokens], got shape {list(tokens.shape)}")
        lengths = get(request, "SEQUENCE_LENGTH")
        lengths = (np.full(tokens.shape[:2], tokens.shape[2]) if lengths is None
                   else np.asarray(lengths).reshape(tokens.shape[:2]))
        raw = rq.boolean(get(request, "RAW"), "RAW")
        vocab = self.tokenizer.vocab_size
        finals, analyses = [], []
        for b in range(tokens.shape[0]):
            for k in range(tokens.shape[1]):
                n = int(lengths[b, k])
                ids = [int(t) for t in tokens[b, k, :max(0, min(n, tokens.shape[2]))]]
                if any(t < 0 or t >= vocab for t in ids):
                    raise rq.RequestError(f"TOKENS_BATCH has ids outside the vocabulary [0, {vocab})")
                d = decode_completion(self.tokenizer, ids, raw=raw)
                finals.append(d.final.encode("utf-8"))
                analyses.append(d.analysis.encode("utf-8"))
        shape = tokens.shape[:2]
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OUTPUT", np.array(finals, dtype=np.object_).reshape(shape)),
            pb_utils.Tensor("ANALYSIS_OUTPUT", np.array(analyses, dtype=np.object_).reshape(shape)),
        ])
