"""Token ids in, token ids out: one gRPC bidirectional stream per request to the `tensorrt_llm` model
(TensorRT-LLM's tensor names: input_ids, input_lengths, request_output_len, streaming, temperature, runtime_top_p,
seed, end_id, stop_words_list -> output_ids, finish_reason), on one shared asyncio channel.

Closing the generator before the answer ends (the HTTP client went away, a stop string matched) cancels the gRPC
call, which Triton turns into a cancelled request that the model notices at its next cancellation poll (every
0.1 s), and also sends TensorRT-LLM's own stop request (`stop`=true with the same request id), which the model acts
on at its next step: measured on the tiny engine, 60 disconnects in a row took at most 0.11 s each to free the slot
with the cancellation alone and mostly about 0.015 s with both.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Sequence

import numpy as np

from deploy.client import InvalidRequestError, ServerUnavailableError, classify, infer_inputs

MODEL = "tensorrt_llm"


class TritonStream:
    def __init__(self, url: str, model: str = MODEL):
        self.url = url
        self.model = model
        self._client = None
        self._ready = False
        self.was_ready = False         # it has answered ready once: not ready now means down, not still loading
        self._stopping: set = set()
        # Set by serve-engine's watchdog while a model's backend process is dead (deploy/watchdog.py): readiness is
        # false, new requests fail at once and broken streams end with this message, which names the model.
        self.down: str | None = None

    def mark_down(self, message: str) -> None:
        self.down = message
        self._ready = False

    def mark_up(self) -> None:
        self.down = None
        self._ready = False            # asked again

    async def client(self):
        if self._client is None:
            import tritonclient.grpc.aio as aio
            self._client = aio.InferenceServerClient(self.url)
        return self._client

    async def is_ready(self) -> bool:
        """Whether the model answers; once it has, assumed to stay up until a stream finds Triton unreachable."""
        if self.down is not None:
            return False
        if self._ready:
            return True
        try:
            c = await self.client()
            self._ready = bool(await c.is_model_ready(self.model, client_timeout=2))
        except Exception:  # noqa: BLE001 - still starting, or gone
            self._ready = False
        self.was_ready |= self._ready
        return self._ready

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def generate(self, prompt_ids: Sequence[int], max_tokens: int, *, stream: bool,
                       temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                       stop_token_ids: Sequence[int] = (), end_id: int | None = None,
                       request_id: str = "") -> AsyncIterator[tuple[list[int], str | None]]:
        """Yields (new token ids, finish reason or None); the last item has the reason ("stop" or "length").
        Raises InvalidRequestError (the model refused the request), ServerUnavailableError, ClientError."""
        from model_repo.requests import pack_stop_words
        if self.down is not None:
            raise ServerUnavailableError(self.down)
        arrays = {
            "input_ids": np.asarray([prompt_ids], dtype=np.int32),
            "input_lengths": np.asarray([[len(prompt_ids)]], dtype=np.int32),
            "request_output_len": np.asarray([[max_tokens]], dtype=np.int32),
            "streaming": np.asarray([[stream]], dtype=np.bool_),
        }
        if temperature is not None:
            arrays["temperature"] = np.asarray([[temperature]], dtype=np.float32)
        if top_p is not None:
            arrays["runtime_top_p"] = np.asarray([[top_p]], dtype=np.float32)
        if seed is not None:
            arrays["seed"] = np.asarray([[seed]], dtype=np.uint64)
        if end_id is not None:
            arrays["end_id"] = np.asarray([[end_id]], dtype=np.int32)
        if stop_token_ids:
            arrays["stop_words_list"] = pack_stop_words([[int(t)] for t in stop_token_ids])[None]
        request = {"model_name": self.model, "inputs": infer_inputs(arrays), "request_id": request_id}
        done = asyncio.Event()

        async def requests():
            yield request
            await done.wait()     # keep our side open until the answer is complete (or we cancel)

        client = await self.client()
        call = client.stream_infer(requests())
        finished = False
        try:
            async for result, error in call:
                if error is not None:
                    raise classify(error.message(), str(error.status()) if error.status() else None)
                ids = result.as_numpy("output_ids")
                reason = result.as_numpy("finish_reason")
                tokens = [] if ids is None else [int(t) for t in ids.reshape(-1)]
                why = None
                if reason is not None and reason.size:
                    v = reason.reshape(-1)[0]
                    why = v.decode() if isinstance(v, bytes) else str(v)
                yield tokens, why
                if why is not None:
                    finished = True
                    return
            raise ServerUnavailableError(f"{self.url}: the stream ended before the answer did")
        except InvalidRequestError:
            raise
        except Exception as e:  # noqa: BLE001 - grpc errors -> our classes
            if self.down is not None:
                raise ServerUnavailableError(self.down) from None
            from tritonclient.utils import InferenceServerException
            if isinstance(e, InferenceServerException):
                raise classify(e.message(), str(e.status()) if e.status() else None) from None
            import grpc
            if isinstance(e, grpc.aio.AioRpcError):
                err = classify(e.details() or str(e), str(e.code()))
                if isinstance(err, ServerUnavailableError):
                    self._ready = False        # asked again by /health and the next request, not assumed up
                raise err from None
            raise
        finally:
            if not finished:
                call.cancel()
            done.set()
            if not finished:
                if request_id:
                    task = asyncio.get_running_loop().create_task(self._send_stop(request_id))
                    self._stopping.add(task)
                    task.add_done_callback(self._stopping.discard)

    async def _send_stop(self, request_id: str, timeout_s: float = 5.0) -> None:
        """Ask the model to stop `request_id`. It answers with an empty final response, which this stream does not
        ask for, so the call ends when our side closes and Triton has handled the request."""
        arrays = {"stop": np.asarray([[True]], dtype=np.bool_)}
        request = {"model_name": self.model, "inputs": infer_inputs(arrays), "request_id": request_id}

        async def requests():
            yield request

        try:
            call = (await self.client()).stream_infer(requests())
            try:
                await asyncio.wait_for(_drain(call), timeout_s)
            finally:
                call.cancel()
        except Exception:  # noqa: BLE001 - best effort: the gRPC cancellation is on its way too
            pass


async def _drain(call) -> None:
    async for _ in call:
        pass
