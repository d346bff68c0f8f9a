"""The FastAPI application: GET /v1/models, POST /v1/chat/completions and /v1/completions (streamed as server-sent
events ending with `data: [DONE]`, or whole), GET /health and GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request
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


@dataclass
class AppState:
    """What every handler reads, held in app.state.openai: the served model, the Triton stream it generates
    through, and the endpoint's metrics."""
    model: ServedModel
    triton: TritonStream
    metrics: Metrics
    body_timeout_s: float = 30.0       # the whole request body must arrive within this (a stalled client: 408)


def app_state(request: Request) -> AppState:
    return request.app.state.openai


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await app.state.openai.triton.close()


def create_app(model: ServedModel, triton: TritonStream, metrics: Metrics | None = None,
               body_timeout_s: float = 30.0) -> FastAPI:
    app = FastAPI(title="gptoss-trt OpenAI-compatible endpoint", lifespan=lifespan)
    app.state.openai = AppState(model, triton, metrics or Metrics(), body_timeout_s)
    app.add_exception_handler(OpenAIError, on_openai_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnected, on_client_gone)
    app.add_exception_handler(Exception, on_crash)
    app.add_middleware(CountRequests, metrics=app.state.openai.metrics)
    app.include_router(router)
    return app


# -- errors ------------------------------------------------------------------------------------------------------
def fail(request: Request, e: OpenAIError) -> JSONResponse:
    app_state(request).metrics.errors.labels(endpoint_label(request.url.path), e.type).inc()
    # A body left unread (413, 408) cannot be skipped on a keep-alive connection: close it.
    headers = {"Connection": "close"} if e.status in (408, 413) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def on_openai_error(request: Request, e: OpenAIError):
    return fail(request, e)


async def on_http_error(request: Request, e: HTTPException):
    return fail(request, OpenAIError(e.status_code, str(e.detail), "invalid_request_error"))


async def on_client_gone(request: Request, e: ClientDisconnected):
    return Response(status_code=499)       # nginx's "client closed request"; nobody reads it


async def on_crash(request: Request, e: Exception):
    return fail(request, errors.server_error(f"internal error: {type(e).__name__}: {e}"))


def as_openai(e: Exception, triton: TritonStream) -> OpenAIError:
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


router = APIRouter()


# -- info --------------------------------------------------------------------------------------------------------
@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [app_state(request).model.card()]}


@router.get("/v1/models/{name:path}")
async def one_model(name: str, request: Request):
    model = app_state(request).model
    if name != model.name:
        raise errors.model_not_found(name, model.name)
    return model.card()


@router.get("/health")
async def health(request: Request):
    ok = await app_state(request).triton.is_ready()
    return Response(status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus(request: Request):
    return Response(app_state(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# -- generation --------------------------------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def chat(request: Request):
    model = app_state(request).model
    req = await parse(request, ChatRequest)
    use_tools = req.tool_choice != "none"
    prompt = await off_loop(render_prompt, model.tokenizer, req.messages, req.tools, req.reasoning_effort, use_tools)
    check_prompt_size(model, len(prompt), "messages")
    parser = HarmonyOutput() if model.harmony else TextOutput(model.tokenizer)
    job = job_for(model, "/v1/chat/completions", req, prompt, parser, model.tokenizer.stop_ids())
    reply = Reply("chat.completion.chunk", f"chatcmpl-{job.request_id}", int(time.time()), model.name,
                  req.include_usage)
    if req.stream:
        return await stream_response(request, job, reply, chat_chunks)
    out = await whole(request, job)
    calls = tool_calls_json(out.tool_calls)
    message = {"role": "assistant", "content": out.content if (out.content or not calls) else None,
               "reasoning_content": out.reasoning or None}
    if calls:
        message["tool_calls"] = calls
    return {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": model.name,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": job.finish_reason}],
            "usage": job.usage()}


async def chat_chunks(reply: Reply, job: Job, deltas):
    yield reply.chunk({"delta": {"role": "assistant", "content": ""}})
    async for d in deltas:
        yield reply.chunk({"delta": delta_json(d)})
    yield reply.chunk({"delta": {}}, job.finish_reason)


@router.post("/v1/completions")
async def completions(request: Request):
    model = app_state(request).model
    req = await parse(request, CompletionRequest)
    p = req.prompt
    if isinstance(p, list) and p and isinstance(p[0], int):
        bad = [t for t in p if not 0 <= t < model.tokenizer.vocab_size]
        if bad:
            raise errors.bad_request(f"prompt has token ids outside [0, {model.tokenizer.vocab_size}): {bad[:5]}",
                                     "prompt")
        prompt = list(p)
    else:
        prompt = await off_loop(model.tokenizer.encode, p[0] if isinstance(p, list) else p)
        if not prompt:
            raise errors.bad_request("prompt encodes to no tokens", "prompt")
    check_prompt_size(model, len(prompt), "prompt")
    job = job_for(model, "/v1/completions", req, prompt, TextOutput(model.tokenizer))
    reply = Reply("text_completion", f"cmpl-{job.request_id}", int(time.time()), model.name, req.include_usage)
    if req.stream:
        return await stream_response(request, job, reply, completion_chunks)
    out = await whole(request, job)
    return {"id": reply.id, "object": "text_completion", "created": reply.created, "model": model.name,
            "choices": [{"index": 0, "text": out.content, "logprobs": None, "finish_reason": job.finish_reason}],
            "usage": job.usage()}


async def completion_chunks(reply: Reply, job: Job, deltas):
    async for d in deltas:
        if d.content:
            yield reply.chunk({"text": d.content})
    yield reply.chunk({"text": ""}, job.finish_reason)


# -- plumbing ----------------------------------------------------------------------------------------------------
# The largest request body read (GPTOSS_OPENAI_MAX_BODY_BYTES); a larger one is 413 before it is parsed.
MAX_BODY_BYTES_ENV = "GPTOSS_OPENAI_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 4 * 2**20


def max_body_bytes() -> int:
    value = os.environ.get(MAX_BODY_BYTES_ENV)
    return int(value) if value and value.isdigit() else DEFAULT_MAX_BODY_BYTES


# The longest prompt accepted, in tokens (GPTOSS_OPENAI_MAX_PROMPT_TOKENS; default and ceiling: the engine's
# max_seq_len). A longer one is a 400 naming the limit, before anything reaches Triton.
MAX_PROMPT_TOKENS_ENV = "GPTOSS_OPENAI_MAX_PROMPT_TOKENS"


def max_prompt_tokens(model: ServedModel) -> int:
    value = os.environ.get(MAX_PROMPT_TOKENS_ENV)
    return min(int(value), model.max_seq_len) if value and value.isdigit() else model.max_seq_len


def check_prompt_size(model: ServedModel, n: int, param: str) -> None:
    limit = max_prompt_tokens(model)
    if n > limit:
        raise errors.OpenAIError(400, f"the prompt is {n} tokens, more than this server's limit of {limit} tokens "
                                      f"({MAX_PROMPT_TOKENS_ENV}, at most max_seq_len {model.max_seq_len}); "
                                      f"send a shorter prompt", "invalid_request_error", param, "prompt_too_long")


async def off_loop(fn, *args):
    """fn(*args) in a worker thread: tokenizing or rendering a large prompt costs CPU time that would otherwise
    stall every other connection (and /health) on the event loop."""
    import anyio
    return await anyio.to_thread.run_sync(fn, *args)


def _decode_body(raw: bytes):
    """JSON text -> object, off the event loop (a large body costs CPU time). Deep nesting (RecursionError),
    integers past Python's digit limit (ValueError) and lone surrogates are client mistakes, 400."""
    try:
        body = json.loads(raw)
        json.dumps(body, ensure_ascii=False).encode("utf-8")     # lone surrogates (\ud800) fail here
    except RecursionError:
        raise errors.bad_request("the request body nests too deeply") from None
    except (ValueError, UnicodeError) as e:                         # JSONDecodeError is a ValueError
        raise errors.bad_request(f"the request body is not valid JSON: {str(e)[:200]}") from None
    return body


async def _read_body(request: Request) -> bytes:
    limit = max_body_bytes()
    declared = request.headers.get("content-length")
    too_big = errors.OpenAIError(413, f"the request body is larger than {limit} bytes ({MAX_BODY_BYTES_ENV}); "
                                      f"send a shorter prompt", param=None, code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    timeout_s = app_state(request).body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
    except TimeoutError:
        raise errors.OpenAIError(408, f"the request body did not arrive within {timeout_s:g} s "
                                      f"(serve-engine --openai-body-timeout)", "invalid_request_error", None,
                                 "request_timeout") from None
    return b"".join(chunks)


async def parse(request: Request, cls):
    state = app_state(request)
    body = await off_loop(_decode_body, await _read_body(request))
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be a JSON object")
    try:
        req = cls.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or None
        raise errors.bad_request(f"{where}: {first.get('msg')}" if where else first.get("msg"),
                                 where.split(".")[0] if where else None) from None
    if req.model != state.model.name:
        raise errors.model_not_found(req.model, state.model.name)
    if not await state.triton.is_ready():
        if state.triton.down is not None:
            raise errors.unavailable(state.triton.down)
        if state.triton.was_ready:
            raise errors.unavailable(f"Triton at {state.triton.url} does not answer for {state.triton.model}; "
                                     f"retry shortly")
        raise errors.loading(f"Triton at {state.triton.url} has not reported {state.triton.model} ready")
    return req


def budget(model: ServedModel, req, prompt_ids: list) -> int:
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


def job_for(model: ServedModel, endpoint: str, req, prompt_ids: list, parser, stop_token_ids=()) -> Job:
    return Job(endpoint=endpoint, prompt_ids=prompt_ids, max_tokens=budget(model, req, prompt_ids), parser=parser,
               stops=StopStrings(req.stop or []), stream=req.stream,
               temperature=1.0 if req.temperature is None else req.temperature, top_p=req.top_p, seed=req.seed,
               stop_token_ids=() if req.ignore_eos else tuple(stop_token_ids),
               end_id=-1 if req.ignore_eos else None, request_id=uuid.uuid4().hex)


@dataclass(frozen=True)
class Reply:
    """What every chunk of one response shares."""
    chunk_object: str               # the streamed chunks' "object"
    id: str
    created: int
    model: str
    include_usage: bool             # the client asked for stream_options.include_usage

    def chunk(self, choice: dict, finish=None) -> dict:
        """One streamed chunk: OpenAI's fields in OpenAI's order; `usage: null` until the last one when the
        client asked for stream_options.include_usage."""
        c = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model,
             "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:
            c["usage"] = None
        return c

    def usage_chunk(self, usage: dict) -> dict:
        return {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model, "choices": [],
                "usage": usage}


async def whole(request: Request, job: Job):
    """The whole answer; cancelled (with its Triton request) if the client disconnects meanwhile."""
    state = app_state(request)
    task = asyncio.ensure_future(collect(job, state.triton, state.metrics))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                task.cancel()
                state.metrics.cancelled.labels(job.endpoint).inc()
                raise ClientDisconnected()
        try:
            return task.result()
        except Exception as e:  # noqa: BLE001
            raise as_openai(e, state.triton) from None
    finally:
        if not task.done():
            task.cancel()


async def stream_response(request: Request, job: Job, reply: Reply, chunks) -> EventStream:
    """Server-sent events of `chunks(reply, job, deltas)`, then the usage chunk if asked for, then [DONE]."""
    state = app_state(request)
    gen = run(job, state.triton, state.metrics)
    # Wait for the first delta before answering, so that errors before it are real HTTP errors.
    first = []
    try:
        async for d in gen:
            first.append(d)
            break
    except Exception as e:  # noqa: BLE001
        await gen.aclose()
        raise as_openai(e, state.triton) from None
    return EventStream(sse(state, job, reply, chunks(reply, job, replay(first, gen)), gen),
                       media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def replay(first: list, gen):
    for d in first:
        yield d
    async for d in gen:
        yield d


async def sse(state: AppState, job: Job, reply: Reply, events, gen):
    completed = False
    try:
        async with aclosing(gen):
            async for c in events:
                yield f"data: {json.dumps(c, ensure_ascii=False)}\n\n"
        if reply.include_usage:
            yield f"data: {json.dumps(reply.usage_chunk(job.usage()))}\n\n"
        completed = True
    except Exception as e:  # noqa: BLE001 - reported in the stream: the status line is already sent
        err = as_openai(e, state.triton)
        state.metrics.errors.labels(job.endpoint, err.type).inc()
        yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
        completed = True
    finally:
        if not completed:
            state.metrics.cancelled.labels(job.endpoint).inc()
    yield "data: [DONE]\n\n"
