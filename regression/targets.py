"""What a suite runs against: an engine directory (the reference runtime, which emulates the engine's quant
numerics) or a served endpoint (our Triton models over gRPC, `tensorrt_llm_bls` with raw_prompt).

Both answer the same two questions:
    generate(texts, max_tokens) -> [Generation(prompt_ids | n_prompt, output_ids, logprobs)]  greedy
    score(text)                -> Scored(ids | n, logprobs [n, vocab] float32)              teacher-forced
An engine directory knows its token ids; a server reports only how many tokens it read (ids=None), and its
context logits come back through the upstream-named `return_context_logits` -> `context_logits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TargetError(RuntimeError):
    """The target cannot be used (missing engine, server down, missing outputs). Exit status 2."""


@dataclass
class Generation:
    prompt_ids: list[int] | None
    n_prompt: int
    output_ids: list[int]
    logprobs: list[float]


@dataclass
class Scored:
    ids: list[int] | None
    n: int
    logprobs: np.ndarray          # float32 [n, vocab]: log_softmax of the logits at every position


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    out = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return out.astype(np.float32)


class EngineTarget:
    kind = "engine"

    def __init__(self, engine_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
        self.path = Path(engine_dir)
        if not self.path.is_dir():
            raise TargetError(f"{self.path}: no such engine directory")
        from spec.engine_values import ENGINE_ERRORS, read_engine
        from spec.manifest import is_engine_dir
        self.manifest = {}
        if is_engine_dir(self.path):
            try:
                self.manifest = read_engine(self.path).manifest.to_dict()
            except ENGINE_ERRORS as e:
                raise TargetError(str(e)) from None
        self.device, self.dtype = device, dtype
        self._rt = None

    @property
    def name(self) -> str:
        return str(self.path)

    def info(self) -> dict:
        m = self.manifest
        return {"target": str(self.path), "kind": self.kind, "model": m.get("model"), "quant": m.get("quant"),
                "gpu": m.get("gpu"), "cache_key": m.get("cache_key"),
                "source_sha256": (m.get("inputs") or {}).get("sha256"), "tools": m.get("tools")}

    @property
    def runtime(self):
        if self._rt is None:
            import torch
            from runtime import Runtime
            try:
                self._rt = Runtime.from_dir(self.path, dtype=getattr(torch, self.dtype), device=self.device)
            except Exception as e:  # noqa: BLE001 - any load failure is an unusable target
                raise TargetError(f"{self.path}: the reference runtime cannot load it: {type(e).__name__}: {e}") from e
            if self._rt.tokenizer is None:
                raise TargetError(f"{self.path}: no tokenizer.json; the suite's texts cannot be tokenized")
        return self._rt

    def encode(self, text: str) -> list[int]:
        return self.runtime.encode(text)

    def generate(self, texts: list[str], max_tokens: int) -> list[Generation]:
        """Greedy, all prompts in one batch (the runtime pads them; each sequence decodes on its own)."""
        from runtime import SamplingParams
        ids = [self.encode(t) for t in texts]
        res = self.runtime.generate(ids, SamplingParams(max_tokens=max_tokens, logprobs=True))
        return [Generation(i, len(i), list(r.output_ids), [float(x) for x in r.logprobs]) for i, r in zip(ids, res)]

    def score(self, text: str) -> Scored:
        ids = self.encode(text)
        logits = self.runtime.prompt_logits(ids).float().cpu().numpy()
        return Scored(ids, len(ids), _log_softmax(logits))

    def close(self) -> None:
        self._rt = None


class ServerTarget:
    kind = "url"

    def __init__(self, url: str, model: str = "tensorrt_llm_bls", timeout_s: float = 300.0):
        from deploy.client import LLMClient
        self.url = url
        self.client = LLMClient(url, model, timeout_s=timeout_s, retries=2)
        self._info = None

    @property
    def name(self) -> str:
        return self.url

    def info(self) -> dict:
        """Model, quant and GPU of the served engine, read from the tensorrt_llm model's config parameters."""
        if self._info is None:
            params = {}
            try:
                import tritonclient.grpc as grpcclient
                c = grpcclient.InferenceServerClient(self.url)
                try:
                    cfg = c.get_model_config("tensorrt_llm", as_json=True, client_timeout=10)
                finally:
                    c.close()
                params = {k: v.get("string_value") for k, v in cfg.get("config", {}).get("parameters", {}).items()}
            except Exception as e:  # noqa: BLE001
                raise TargetError(f"{self.url}: cannot read the served model's configuration ({e}); is "
                                  f"serve-engine running there?") from None
            self._info = {"target": self.url, "kind": self.kind, "model": params.get("engine_model"),
                          "quant": params.get("engine_quant"), "gpu": params.get("engine_gpu"),
                          "backend": params.get("backend"), "source_sha256": None}
        return self._info

    def encode(self, text: str):
        return None

    def _call(self, text: str, max_tokens: int, **kw):
        from deploy.client import ClientError
        try:
            return self.client.generate(text, max_tokens, raw=True, temperature=0.0, **kw)
        except ClientError as e:
            raise TargetError(f"{self.url}: {type(e).__name__}: {e}") from None

    def generate(self, texts: list[str], max_tokens: int) -> list[Generation]:
        """Greedy, the prompts sent concurrently (the server batches them in flight), answers in order."""
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(8, len(texts))) as pool:
            return list(pool.map(lambda t: self._generate_one(t, max_tokens), texts))

    def _generate_one(self, text: str, max_tokens: int) -> Generation:
        r = self._call(text, max_tokens, return_log_probs=True)
        if r.output_ids is None or r.output_log_probs is None:
            raise TargetError(f"{self.url}: the server returned no output_ids/output_log_probs; it needs the "
                              f"model repository of this version (write-model-repo / build-engine)")
        return Generation(None, int(r.num_input_tokens or 0), list(r.output_ids), list(r.output_log_probs))

    def score(self, text: str) -> Scored:
        r = self._call(text, 1, return_context_logits=True)
        if r.context_logits is None:
            raise TargetError(f"{self.url}: the server returned no context_logits; it needs the model repository "
                              f"of this version (write-model-repo / build-engine)")
        logits = np.asarray(r.context_logits, dtype=np.float32)
        return Scored(None, logits.shape[0], _log_softmax(logits))

    def close(self) -> None:
        pass
