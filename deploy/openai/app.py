"""The FastAPI application: GET /v1/models, POST /v1/chat/completions and /v1/completions (streamed as server-sent
events ending with `data: [DONE]`, or whole), GET /health and GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from deploy.client import ClientError, InvalidRequestError, ServerUnavailableError
from deploy.openai import errors
from deploy.openai.chat_render import render_prompt
from deploy.openai.errors import OpenAIError
from deploy.openai.generation import Job, collect, delta_json, run, tool_calls_json
from deploy.openai.metrics import Metrics
from deploy.openai.output import HarmonyOutput, HarmonyOutputError, StopStrings, TextOutput
from deploy.openai.schemas import ChatRequest, CompletionRequest
from deploy.openai.triton_stream import TritonStream
from model_repo.tokenizer import ServingTokenizer

DISCONNECT_POLL_S = 0.25


class EventStream(StreamingResponse):
    """Server-sent events whose generator is always closed when the response ends. Starlette cancels the sending
    task when the client disconnects; if that lands while a chunk is being sent (not inside our generator), the
    generator is left suspended until garbage collection closes it, and its Triton request runs on meanwhile."""

    async def stream_response(self, send) -> None:
        import anyio
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


ROUTES = ("/v1/models", "/v1/chat/completions", "/v1/completions")


def endpoint_label(path: str) -> str:
    """A bounded metrics label: a route, or "other" (any path a client tries must not add a time series)."""
    if path in ROUTES:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class ClientDisconnected(Exception):
    """The client went away before its non-streamed answer was ready."""


class CountRequests:
    """Counts /v1/ responses by path and status. A plain ASGI middleware: Starlette's BaseHTTPMiddleware would sit
    between the handler and the connection and hide a client's disconnect from Request.is_disconnected()."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint_label(scope["path"]), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


@dataclass
class ServedModel:
    name: str
    tokenizer: ServingTokenizer
    max_seq_len: int
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def harmony(self) -> bool:
        """Whether generated ids can be parsed as Harmony by openai-harmony (its own vocabulary)."""
        return self.tokenizer.kind == "o200k_harmony"

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "gptoss-trt",
                "max_model_len": self.max_seq_len}


def create_app(model: ServedModel, triton: TritonStream, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await triton.close()

    app = FastAPI(title="gptoss-trt OpenAI-compatible endpoint", lifespan=lifespan)
    app.state.metrics = metrics

    def fail(path: str, e: OpenAIError) -> JSONResponse:
        metrics.errors.labels(endpoint_label(path), e.type).inc()
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, e: OpenAIError):
        return fail(request.url.path, e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        return fail(request.url.path, OpenAIError(e.status_code, str(e.detail), "invalid_request_error"))

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, e: ClientDisconnected):
        return Response(status_code=499)       # nginx's "client closed request"; nobody reads it

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        return fail(request.url.path, errors.server_error(f"internal error: {type(e).__name__}: {e}"))

    app.add_middleware(CountRequests, metrics=metrics)

    # -- info --------------------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model.card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str):
        if name != model.name:
            raise errors.model_not_found(name, model.name)
        return model.card()

    @app.get("/health")
    async def health():
        ok = await triton.is_ready()
        return Response(status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- generation ----------------------------------------------------------------------------------------------
    async def parse(request: Request, cls):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise errors.bad_request(f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        try:
            req = cls.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or None
            raise errors.bad_request(f"{where}: {first.get('msg')}" if where else first.get("msg"),
                                     where.split(".")[0] if where else None) from None
        if req.model != model.name:
            raise errors.model_not_found(req.model, model.name)
        if not await triton.is_ready():
            raise errors.loading(f"Triton at {triton.url} has not reported {triton.model} ready")
        return req

    def budget(req, prompt_ids: list) -> int:
        limit, field_name = req.token_limit()
        n = len(prompt_ids)
        if limit is not None and limit < 1:
            raise errors.bad_request(f"{field_name} must be at least 1, got {limit}", field_name)
        room = model.max_seq_len - n
        if room < 1:
            raise errors.bad_request(f"This model's maximum context length is {model.max_seq_len} tokens, and the "
                                     f"prompt is {n} tokens, leaving no room to generate", "messages")
        if limit is None:
            return room
        if limit > room:
            raise errors.bad_request(f"This model's maximum context length is {model.max_seq_len} tokens. However, "
                                     f"you requested {n + limit} tokens ({n} in the prompt, {limit} in the "
                                     f"completion); lower {field_name} to at most {room}", field_name)
        return limit

    def job_for(endpoint: str, req, prompt_ids: list, parser, stop_token_ids=()) -> Job:
        return Job(endpoint=endpoint, prompt_ids=prompt_ids, max_tokens=budget(req, prompt_ids), parser=parser,
                   stops=StopStrings(req.stop or []), stream=req.stream,
                   temperature=1.0 if req.temperature is None else req.temperature, top_p=req.top_p, seed=req.seed,
                   stop_token_ids=() if req.ignore_eos else tuple(stop_token_ids),
                   end_id=-1 if req.ignore_eos else None, request_id=uuid.uuid4().hex)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await parse(request, ChatRequest)
        use_tools = req.tool_choice != "none"
        prompt = render_prompt(model.tokenizer, req.messages, req.tools, req.reasoning_effort, use_tools)
        parser = HarmonyOutput() if model.harmony else TextOutput(model.tokenizer)
        job = job_for("/v1/chat/completions", req, prompt, parser, model.tokenizer.stop_ids())
        cid, created = f"chatcmpl-{job.request_id}", int(time.time())

        def chunk(delta: dict, finish=None) -> dict:
            return envelope("chat.completion.chunk", cid, created, req, {"delta": delta}, finish)

        if req.stream:
            def events(gen):
                async def gen_events():
                    yield chunk({"role": "assistant", "content": ""})
                    async for d in gen:
                        yield chunk(delta_json(d))
                    yield chunk({}, job.finish_reason)
                return gen_events()
            return await stream_response(request, job, events, req.include_usage, "chat.completion.chunk", cid,
                                         created)
        out = await whole(request, job)
        calls = tool_calls_json(out.tool_calls)
        message = {"role": "assistant", "content": out.content if (out.content or not calls) else None,
                   "reasoning_content": out.reasoning or None}
        if calls:
            message["tool_calls"] = calls
        return {"id": cid, "object": "chat.completion", "created": created, "model": model.name,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": job.finish_reason}],
                "usage": job.usage()}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], int):
            bad = [t for t in p if not 0 <= t < model.tokenizer.vocab_size]
            if bad:
                raise errors.bad_request(f"prompt has token ids outside [0, {model.tokenizer.vocab_size}): {bad[:5]}",
                                         "prompt")
            prompt = list(p)
        else:
            prompt = model.tokenizer.encode(p[0] if isinstance(p, list) else p)
            if not prompt:
                raise errors.bad_request("prompt encodes to no tokens", "prompt")
        job = job_for("/v1/completions", req, prompt, TextOutput(model.tokenizer))
        cid, created = f"cmpl-{job.request_id}", int(time.time())

        def chunk(text: str, finish=None) -> dict:
            return envelope("text_completion", cid, created, req, {"text": text}, finish)

        if req.stream:
            def events(gen):
                async def gen_events():
                    async for d in gen:
                        if d.content:
                            yield chunk(d.content)
                    yield chunk("", job.finish_reason)
                return gen_events()
            return await stream_response(request, job, events, req.include_usage, "text_completion", cid, created)
        out = await whole(request, job)
        return {"id": cid, "object": "text_completion", "created": created, "model": model.name,
                "choices": [{"index": 0, "text": out.content, "logprobs": None, "finish_reason": job.finish_reason}],
                "usage": job.usage()}

    # -- plumbing ------------------------------------------------------------------------------------------------
    def envelope(obj: str, cid: str, created: int, req, choice: dict, finish) -> dict:
        """One streamed chunk: OpenAI's fields in OpenAI's order; `usage: null` until the last one when the
        client asked for stream_options.include_usage."""
        c = {"id": cid, "object": obj, "created": created, "model": model.name,
             "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": finish}]}
        if req.include_usage:
            c["usage"] = None
        return c

    def as_openai(e: Exception) -> OpenAIError:
        if isinstance(e, OpenAIError):
            return e
        if isinstance(e, HarmonyOutputError):
            return errors.server_error(str(e), "invalid_model_output")
        if isinstance(e, InvalidRequestError):
            return errors.bad_request(str(e).split("invalid argument: ", 1)[-1])
        if isinstance(e, ServerUnavailableError):
            return errors.unavailable(f"Triton at {triton.url}: {e}")
        if isinstance(e, ClientError):
            return errors.server_error(f"Triton at {triton.url}: {e}", "backend_error")
        raise e

    async def whole(request: Request, job: Job):
        """The whole answer; cancelled (with its Triton request) if the client disconnects meanwhile."""
        task = asyncio.ensure_future(collect(job, triton, metrics))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    task.cancel()
                    metrics.cancelled.labels(job.endpoint).inc()
                    raise ClientDisconnected()
            try:
                return task.result()
            except Exception as e:  # noqa: BLE001
                raise as_openai(e) from None
        finally:
            if not task.done():
                task.cancel()

    async def stream_response(request: Request, job: Job, events, include_usage: bool, obj: str, cid: str,
                              created: int):
        gen = run(job, triton, metrics)
        # Wait for the first delta before answering, so that errors before it are real HTTP errors.
        first = []
        try:
            async for d in gen:
                first.append(d)
                break
        except Exception as e:  # noqa: BLE001
            await gen.aclose()
            raise as_openai(e) from None

        async def replay():
            for d in first:
                yield d
            async for d in gen:
                yield d

        async def sse():
            completed = False
            try:
                async with aclosing(gen):
                    async for c in events(replay()):
                        yield f"data: {json.dumps(c, ensure_ascii=False)}\n\n"
                if include_usage:
                    yield f"data: {json.dumps({'id': cid, 'object': obj, 'created': created, 'model': model.name, 'choices': [], 'usage': job.usage()})}\n\n"
                completed = True
            except Exception as e:  # noqa: BLE001 - reported in the stream: the status line is already sent
                err = as_openai(e)
                metrics.errors.labels(job.endpoint, err.type).inc()
                yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
                completed = True
            finally:
                if not completed:
                    metrics.cancelled.labels(job.endpoint).inc()
            yield "data: [DONE]\n\n"

        return EventStream(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
