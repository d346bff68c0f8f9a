"""`--executor auto`: ONNX Runtime where it runs the engine, the reference runtime for what it cannot run.

    rt = AutoRuntime(onnxruntime_runtime, load_reference)    # a runtime.api.Runtime
    rt.generate(prompts, params)      # on ONNX Runtime; a request it fails is run again on the reference

A request ONNX Runtime fails before its first token (its allocator refusing a long prompt's activations, a
node it cannot execute) is run again from the start on the reference runtime (loaded on first need, kept
for later requests), with one line on stderr saying why; later requests try ONNX Runtime again. A failure
after tokens were streamed is not retried (the caller has them): it propagates as it is. Errors of the
request itself (an empty prompt, ids out of range, past the context) are the same on both and propagate
unchanged.
"""

from __future__ import annotations

import sys
from typing import Callable

from runtime.api import Runtime


def is_executor_failure(e: BaseException) -> bool:
    """ONNX Runtime's own errors (its pybind exceptions: Fail, RuntimeException, InvalidArgument, ...) and
    running out of memory: what the executor could not do, as opposed to a bad request. The scheduler reports
    a request's failure as text (runtime.generate raises RuntimeError("prompt i: generation failed (stage):
    Type: message")), so that form is read too: ONNX Runtime prefixes its messages with [ONNXRuntimeError],
    or "Error in execution:" from run_with_iobinding."""
    if isinstance(e, MemoryError) or type(e).__module__.startswith("onnxruntime"):
        return True
    text = str(e)
    # run_with_iobinding (the in-place cache path) reports as "Error in execution: ..." without the prefix.
    return isinstance(e, RuntimeError) and "generation failed" in text and (
        "[ONNXRuntimeError]" in text or "Error in execution:" in text or ": MemoryError:" in text)


def one_line(e: BaseException, head: int = 220, tail: int = 160) -> str:
    """An error's message on one line; a long one (ONNX Runtime's run several hundred characters, the cause
    at the end: "Available memory of ... is smaller than requested bytes of ...") keeps its start and end."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= head + tail + 5 else f"{text[:head]} ... {text[-tail:]}"


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class AutoRuntime(Runtime):
    """A Runtime over ONNX Runtime's executor whose requests fall back to the reference runtime."""

    def __init__(self, primary: Runtime, load_fallback: Callable[[], Runtime]):
        super().__init__(primary.network, None, primary.tokenizer, source=primary.source, executor=primary.model)
        self._load_fallback = load_fallback
        self._fallback: Runtime | None = None

    def fallback(self, e: BaseException) -> Runtime:
        note(f"executor auto: onnxruntime could not run this request ({type(e).__name__}: {one_line(e)}); "
             f"running it on the reference runtime")
        if self._fallback is None:
            self._fallback = self._load_fallback()
        return self._fallback

    def generate(self, prompts, params=None):
        try:
            return super().generate(prompts, params)
        except Exception as e:
            if not is_executor_failure(e):
                raise
            return self.fallback(e).generate(prompts, params)

    def generate_stream(self, prompts, params=None, results=None):
        mark = None if results is None else len(results)
        events = super().generate_stream(prompts, params, results)
        try:
            first = next(events)
        except StopIteration:
            return
        except Exception as e:
            if not is_executor_failure(e):
                raise
            if results is not None:
                del results[mark:]                      # the failed attempt's unfinished results
            yield from self.fallback(e).generate_stream(prompts, params, results)
            return
        yield first
        yield from events

    def prompt_logits(self, ids):
        try:
            return super().prompt_logits(ids)
        except Exception as e:
            if not is_executor_failure(e):
                raise
            return self.fallback(e).prompt_logits(ids)
