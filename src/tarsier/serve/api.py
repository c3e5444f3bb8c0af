"""``tarsier serve``: an OpenAI-compatible chat-completions server for video (FastAPI + uvicorn).

A request's media is fetched and decoded in a worker pool, its prompt built with the model's chat
template, and its generation queued on the :class:`~tarsier.engine.scheduler.Scheduler`, which
batches requests that arrive together. Replies stream back per request (SSE) or come whole.

Every refusal is an OpenAI-style error body with one line of message and the status a client
expects; nothing a client sends can stop the server. SIGTERM drains: requests in progress finish,
new ones get 503, then the process exits.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tarsier.errors import TarsierError
from tarsier.serve.media_sources import MediaPolicy, local_media
from tarsier.serve.metrics import Metrics
from tarsier.serve.protocol import ApiError, ChatRequest, parse_chat_request

if TYPE_CHECKING:
    import torch

    from tarsier.engine.scheduler import Scheduler
    from tarsier.models.interface import FamilyModel, FamilyProcessor

Loader = Callable[[], "tuple[FamilyModel, FamilyProcessor]"]


@dataclass
class ServeConfig:
    """Server limits and settings (the ``tarsier serve`` options)."""

    model_name: str
    api_key: str | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    media_workers: int = 2
    cache_bytes: int | None = None  # the prefix cache's budget (None: the device's default; 0: none)
    prefill_chunk: int = 0  # a new video's prompt positions prefilled per step while others stream (0: whole)
    max_body_bytes: int = 96 * 1024 * 1024  # base64 makes media a third larger
    max_tokens: int = 2048  # most new tokens one request may ask for
    default_max_tokens: int = 512  # the reference's default
    max_prompt_tokens: int = 4096  # text tokens of the conversation, frames not counted


@dataclass
class _Prepared:
    ids: list[int]
    media: dict[str, torch.Tensor]  # the model's media inputs (pixel_values, Tarsier2's image_grid_thw)
    prompt_tokens: int


class _Reply:
    """The model thread's tokens for one request, handed to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue[int | tuple[str | None]] = asyncio.Queue()
        self.job: Any = None

    def on_token(self, token: int) -> None:
        self._put(token)

    def on_end(self, error: str | None) -> None:
        self._put((error,))

    def _put(self, event: int | tuple[str | None]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server stopped): nobody is listening
            if self.job is not None:
                self.job.cancelled = True


class _ReplyText:
    """Token ids in, text out: whole words as transformers' streamer cuts them, stop strings applied."""

    def __init__(self, processor: FamilyProcessor, stop: list[str]):
        from tarsier.engine.generation import TextPieces

        self.pieces = TextPieces(processor.tokenizer)
        self.stop_ids = set(processor.eos_token_ids)
        self.stop = stop
        self.text = ""
        self.sent = 0
        self.ids: list[int] = []
        self.stopped = False  # EOS or a stop string

    def add(self, token: int) -> str:
        self.ids.append(token)
        if token in self.stop_ids:
            self.stopped = True
            return self.end()
        self.pieces.add(token)
        return self._release(final=False)

    def end(self) -> str:
        self.pieces.end()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        self.text += "".join(self.pieces.take())
        for stop in self.stop:
            at = self.text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                self.text, self.stopped, final = self.text[:at], True, True
        upto = len(self.text) if final else len(self.text) - self._held_back()
        new, self.sent = self.text[self.sent : upto], max(self.sent, upto)
        return new

    def _held_back(self) -> int:
        """Characters at the end that could start a stop string: sent only once they cannot."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def create_app(load: Loader, config: ServeConfig) -> FastAPI:
    """The FastAPI app; ``load`` runs in a background thread so /health can say "loading" meanwhile."""
    state: dict[str, Any] = {"scheduler": None, "processor": None, "error": None, "draining": False}
    metrics = Metrics()
    media_pool = ThreadPoolExecutor(config.media_workers, thread_name_prefix="tarsier-media")

    def load_model() -> None:
        from tarsier.engine.scheduler import Scheduler

        try:
            model, processor = load()
            state["processor"] = processor
            state["scheduler"] = Scheduler(model, processor, max_batch_size=config.max_batch_size,
                                           batch_wait_ms=config.batch_wait_ms, max_queue=config.max_queue,
                                           cache_bytes=config.cache_bytes, prefill_chunk=config.prefill_chunk)
        except Exception as exc:  # reported by /health and every request
            from tarsier.errors import one_line

            state["error"] = one_line(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=load_model, name="tarsier-load", daemon=True)
        loader.start()
        yield
        state["draining"] = True
        loader.join()
        if state["scheduler"] is not None:
            await asyncio.to_thread(state["scheduler"].close, True)
        media_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tarsier", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tarsier = state
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        metrics.observe(exc.status)
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(ApiError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        from tarsier.errors import one_line

        metrics.observe(500)
        return JSONResponse(ApiError(500, f"internal error: {one_line(exc)}").body(), status_code=500)

    app.add_middleware(_Guard, config=config, metrics=metrics)

    def ready() -> Scheduler:
        if state["error"]:
            raise ApiError(503, f"the model failed to load: {state['error']}")
        if state["draining"]:
            raise ApiError(503, "the server is shutting down")
        if state["scheduler"] is None:
            raise ApiError(503, "the model is still loading; retry shortly")
        return state["scheduler"]

    @app.get("/health")
    async def health() -> JSONResponse:
        if state["error"]:
            return JSONResponse({"status": "failed", "error": state["error"]}, status_code=503)
        if state["draining"]:
            return JSONResponse({"status": "draining"}, status_code=503)
        if state["scheduler"] is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": config.model_name})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "tarsier"}]}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(state["scheduler"]), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        started = time.monotonic()
        scheduler = ready()
        body = await _read_json(request, config.max_body_bytes)
        chat = parse_chat_request(body, max_tokens_cap=config.max_tokens, default_max_tokens=config.default_max_tokens)
        if chat.model != config.model_name:
            raise ApiError(404, f"model {chat.model!r} is not served here; this server serves {config.model_name!r}",
                           "model", "model_not_found")
        processor = state["processor"]
        if chat.max_frames is not None and chat.max_frames > processor.max_n_frames:
            raise ApiError(400, f"max_frames is {chat.max_frames}, over this server's --max-frames of "
                           f"{processor.max_n_frames}", "max_frames")
        if scheduler.queue_depth + scheduler.preparing_count >= config.max_queue:  # refuse before decoding
            raise ApiError(503, f"the server is busy: {config.max_queue} requests are already waiting; retry shortly")
        loop = asyncio.get_running_loop()
        reply = _Reply(loop)
        from tarsier.engine.scheduler import Job, QueueFull, ShuttingDown

        with scheduler.preparing():  # the next batch waits for this request's media
            prepared = await loop.run_in_executor(media_pool, _prepare, processor, chat, config)
            job = Job(prepared.ids, prepared.media, chat.settings, reply.on_token, reply.on_end)
            reply.job = job
            try:
                scheduler.submit(job)
            except QueueFull as exc:
                raise ApiError(503, f"the server is busy: {exc}") from None
            except ShuttingDown:
                raise ApiError(503, "the server is shutting down") from None
        completion = _Completion(chat, config.model_name, prepared.prompt_tokens, started, body.get("return_token_ids") is True)
        if chat.stream:
            return StreamingResponse(
                _stream(completion, reply, processor, metrics), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _whole(completion, reply, processor, metrics, request)

    return app


class _Guard:
    """Refusals made before a route runs (counted in /metrics like every other answer).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` hides a client's disconnect from
    the route (``Request.is_disconnected`` stayed False), so a non-streaming request whose client
    had gone generated to its end."""

    def __init__(self, app: Callable, config: ServeConfig, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        error = self.refusal(scope) if scope["type"] == "http" else None
        if error is None:
            await self.app(scope, receive, send)
            return
        self.metrics.observe(error.status)
        await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> ApiError | None:
        from starlette.datastructures import Headers

        headers, config = Headers(scope=scope), self.config
        if config.api_key and scope["path"] != "/health":
            scheme, _, given = headers.get("authorization", "").partition(" ")
            # the scheme is case-insensitive in HTTP; the key is compared in constant time
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.api_key.encode()):
                return ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > config.max_body_bytes:
            return ApiError(413, f"the request body is {int(length):,} bytes, over this server's limit of {config.max_body_bytes:,}")
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope["method"] == "POST" and media_type != "application/json":
            # a web page can send text/plain anywhere without asking: only JSON bodies are taken
            return ApiError(415, f"send the request body as application/json, not {media_type or 'no content type'}")
        return None


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, read up to ``limit`` bytes (for clients that send no Content-Length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over this server's limit of {limit:,} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        body = None
    if body is None or _nesting(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body nests JSON more than {MAX_JSON_DEPTH} levels deep")
    return body


MAX_JSON_DEPTH = 32  # a chat request needs 5 (body, messages, a message, its parts, a part's url object)


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (counted without recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _prepare(processor: FamilyProcessor, chat: ChatRequest, config: ServeConfig) -> _Prepared:
    """Fetch and sample the media, build the prompt ids with the processor's chat template (either
    family: the media in the first user turn, earlier assistant turns included); runs in the media pool."""
    try:
        if chat.media_url is not None:
            with local_media(chat.media_url, config.media) as (path, name):
                try:
                    frames = processor.load_media(path, chat.max_frames, chat.start_time, chat.end_time)
                    ids, media = processor.encode_conversation(chat.messages, frames)
                except TarsierError as exc:
                    raise ApiError(400, str(exc).replace(path, name)) from None
        else:
            ids, media = processor.encode_conversation(chat.messages, None)
    except TarsierError as exc:
        raise ApiError(400, str(exc)) from None
    prompt_tokens = len(ids) - processor.media_token_count(media)
    if prompt_tokens > config.max_prompt_tokens:
        raise ApiError(400, f"the conversation is {prompt_tokens:,} tokens, over this server's limit of "
                       f"{config.max_prompt_tokens:,}", "messages")
    return _Prepared(ids, media, len(ids))


@dataclass
class _Completion:
    """What a response says besides its text."""

    chat: ChatRequest
    model: str
    prompt_tokens: int
    started: float
    return_token_ids: bool
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    first_token_at: float | None = None

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def envelope(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices, **extra}

    def observe(self, metrics: Metrics, text: _ReplyText) -> None:
        now = time.monotonic()
        first = None if self.first_token_at is None else self.first_token_at - self.started
        metrics.observe(200, now - self.started, first, self.prompt_tokens, len(text.ids))


async def _tokens(reply: _Reply, text: _ReplyText, completion: _Completion) -> AsyncIterator[str]:
    """Text deltas until EOS, a stop string or the token limit; an error from the model raises ApiError."""
    while True:
        event = await reply.events.get()
        if isinstance(event, tuple):
            error = event[0]
            if error is not None and error != "cancelled":
                raise ApiError(500, f"generation failed: {error}")
            delta = text.end()
            if delta:
                yield delta
            return
        if completion.first_token_at is None:
            completion.first_token_at = time.monotonic()
        delta = text.add(event)
        if delta:
            yield delta
        if text.stopped:
            reply.job.cancelled = True  # a stop string: the row leaves its batch
            return


def _finish_reason(text: _ReplyText) -> str:
    return "stop" if text.stopped else "length"


async def _whole(completion: _Completion, reply: _Reply, processor: FamilyProcessor, metrics: Metrics,
                 request: Request) -> JSONResponse:
    text = _ReplyText(processor, completion.chat.stop)
    collect = asyncio.ensure_future(_collect(_tokens(reply, text, completion)))
    try:
        while not collect.done():
            await asyncio.wait({collect}, timeout=0.5)
            if not collect.done() and await request.is_disconnected():
                collect.cancel()
                reply.job.cancelled = True  # the client left: free its place in the batch
                metrics.observe(499)
                return JSONResponse({}, status_code=499)
        content = collect.result()
    finally:
        if not collect.done():
            collect.cancel()
            reply.job.cancelled = True
    completion.observe(metrics, text)
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": _finish_reason(text), "logprobs": None}
    if completion.return_token_ids:
        choice["token_ids"] = text.ids
    return JSONResponse(completion.envelope("chat.completion", [choice], usage=completion.usage(len(text.ids))))


async def _collect(deltas: AsyncIterator[str]) -> str:
    return "".join([delta async for delta in deltas])


async def _stream(completion: _Completion, reply: _Reply, processor: FamilyProcessor,
                  metrics: Metrics) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    text = _ReplyText(processor, completion.chat.stop)

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps(completion.envelope('chat.completion.chunk', choices, **extra))}\n\n"

    finished = False
    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        try:
            async for delta in _tokens(reply, text, completion):
                yield event([{"index": 0, "delta": {"content": delta}, "finish_reason": None}])
        except ApiError as exc:  # the status line is sent already: report the error in the stream
            metrics.observe(exc.status)
            yield f"data: {json.dumps(exc.body())}\n\n"
            finished = True
            return
        last: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": _finish_reason(text)}
        if completion.return_token_ids:
            last["token_ids"] = text.ids
        yield event([last])
        if completion.chat.include_usage:
            yield event([], usage=completion.usage(len(text.ids)))
        yield "data: [DONE]\n\n"
        finished = True
        completion.observe(metrics, text)
    finally:
        if not finished:  # the client went away mid-stream: free its place in the batch
            reply.job.cancelled = True
            metrics.observe(499)
