"""Route handlers: read JSON, translate (openai.py), call the manager in a worker thread, write.

A generation runs in a worker thread and reaches the event loop through an asyncio queue; a
client that hangs up sets the cancel flag, so the engine stops within one token and the slot is
free for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from aiohttp import web

from impetus_cli import __version__
from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.generation import Generation
from impetus_cli.runtime.types import GenerationChunk, ToolCall
from impetus_cli.server import openai, sse
from impetus_cli.server.keys import EXECUTOR, MANAGER, REQUEST_LOG, STARTED

T = TypeVar("T")
_END = object()
KNOWN_PATHS = {
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/health",
    "/metrics",
    "/impetus/status",
    "/impetus/events",
    "/impetus/load",
    "/impetus/unload",
}


def endpoint_name(path: str) -> str:
    return path if path in KNOWN_PATHS else "other"


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImpetusError("The request body is not valid UTF-8.") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise ImpetusError("The request body is nested too deeply.") from None
    except ValueError as exc:
        raise ImpetusError(f"The request body is not valid JSON: {exc}.") from None


async def blocking(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR], functools.partial(fn, *args, **kwargs))


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def pump(
    request: web.Request, gen: Generation, cancel: threading.Event
) -> AsyncIterator[GenerationChunk]:
    """Drive ``gen`` in a worker thread; yield its chunks here. Leaving early cancels it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def post(item: Any) -> None:
        # RuntimeError: the loop closed during shutdown, nobody is listening.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            for chunk in gen:
                post(chunk)
        except BaseException as exc:  # re-raised on the loop side
            post(exc)
        finally:
            post(_END)

    worker = loop.run_in_executor(request.app[EXECUTOR], work)
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=0.25)
            except TimeoutError:
                if _client_gone(request):
                    cancel.set()  # e.g. a hang-up during a long prompt evaluation
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()  # harmless after a normal end; stops the engine after a hang-up
        await worker


def _log(request: web.Request, model: str, prompt: int, final: GenerationChunk | None) -> None:
    if final is not None:
        request[REQUEST_LOG] = (
            f"model={model} prompt={prompt} cached={final.cached_tokens} "
            f"completion={final.completion_tokens} ttft={final.ttft_s:.2f}s "
            f"{final.generation_tps:.1f} tok/s"
        )


def _include_usage(body: Any) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _token_bytes(gen: Generation) -> openai.TokenBytes:
    """How a token id becomes its bytes, for logprobs."""
    engine = gen.entry.engine
    piece = getattr(engine, "token_bytes", None)
    return piece if callable(piece) else lambda t: engine.detokenize([t]).encode("utf-8")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = openai.chat_request(body)
    cancel = threading.Event()
    gen = await blocking(request, request.app[MANAGER].start_chat, req, cancel)
    rid = openai.new_id("chatcmpl")
    want_logprobs = req.sampling.logprobs is not None
    if body.get("stream") is not True:
        text, reasoning, final = "", "", None
        calls: list[ToolCall] = []
        chunks: list[GenerationChunk] = []
        async for chunk in pump(request, gen, cancel):
            text, reasoning = text + chunk.text, reasoning + chunk.reasoning
            calls += chunk.tool_calls
            final = chunk if chunk.finish_reason else final
            if want_logprobs:
                chunks.append(chunk)
        _log(request, req.model, gen.prompt_tokens, final)
        reason = openai.finish_reason(final) if final else "stop"
        logprobs = openai.chat_logprobs(chunks, _token_bytes(gen)) if want_logprobs else None
        return web.json_response(
            openai.chat_completion(
                rid, req.model, text, calls, reason, final, gen.prompt_tokens, reasoning, logprobs
            )
        )
    return await _stream_chat(request, gen, cancel, rid, req.model, body, want_logprobs)


async def _stream_chat(
    request: web.Request,
    gen: Generation,
    cancel: threading.Event,
    rid: str,
    model: str,
    body: Any,
    want_logprobs: bool,
) -> web.StreamResponse:
    response = await sse.open_stream(request)
    final: GenerationChunk | None = None
    n_calls = 0
    piece = _token_bytes(gen)
    try:
        await sse.send(
            response, openai.chat_chunk(rid, model, {"role": "assistant", "content": ""})
        )
        async for chunk in pump(request, gen, cancel):
            if chunk.reasoning:  # its own delta: Continue reads only the first field of a delta
                await sse.send(
                    response, openai.chat_chunk(rid, model, {"reasoning_content": chunk.reasoning})
                )
            logprobs = openai.chat_logprobs([chunk], piece) if chunk.logprobs else None
            if chunk.text or logprobs:
                delta = {"content": chunk.text}
                await sse.send(response, openai.chat_chunk(rid, model, delta, None, logprobs))
            for delta in openai.tool_call_deltas(chunk.tool_calls, n_calls):
                await sse.send(response, openai.chat_chunk(rid, model, delta))
            n_calls += len(chunk.tool_calls)
            final = chunk if chunk.finish_reason else final
        reason = openai.finish_reason(final) if final else "stop"
        last = openai.chat_chunk(rid, model, {}, reason)
        last["timings"] = openai.timings(final)
        await sse.send(response, last)
        if _include_usage(body):
            usage = openai.usage_chunk(
                rid, model, "chat.completion.chunk", gen.prompt_tokens, final
            )
            await sse.send(response, usage)
        await sse.done(response)
    except (ConnectionResetError, ConnectionError):
        cancel.set()  # the client hung up; pump's cleanup already waited for the engine
    except ImpetusError as exc:
        await _stream_error(response, exc)
    _log(request, model, gen.prompt_tokens, final)
    return response


async def _stream_error(response: web.StreamResponse, exc: ImpetusError) -> None:
    try:
        await sse.send(response, openai.error_body(exc.message, exc.type, exc.code, exc.param))
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # nobody left to tell


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = openai.completion_request(body)
    cancel = threading.Event()
    gen = await blocking(request, request.app[MANAGER].start_completion, req, cancel)
    rid = openai.new_id("cmpl")
    final: GenerationChunk | None = None
    want_logprobs = req.sampling.logprobs is not None
    piece = _token_bytes(gen)
    if body.get("stream") is not True:
        text = ""
        chunks: list[GenerationChunk] = []
        async for chunk in pump(request, gen, cancel):
            text += chunk.text
            final = chunk if chunk.finish_reason else final
            if want_logprobs:
                chunks.append(chunk)
        _log(request, req.model, gen.prompt_tokens, final)
        logprobs = openai.completion_logprobs(chunks, piece) if want_logprobs else None
        reason = openai.finish_reason(final) if final else "stop"
        return web.json_response(
            openai.text_completion(rid, req.model, text, reason, final, gen.prompt_tokens, logprobs)
        )
    response = await sse.open_stream(request)
    sent = 0  # characters streamed so far, for text_offset
    try:
        async for chunk in pump(request, gen, cancel):
            logprobs = openai.completion_logprobs([chunk], piece, sent) if chunk.logprobs else None
            if chunk.text or logprobs:
                await sse.send(
                    response, openai.text_chunk(rid, req.model, chunk.text, None, logprobs)
                )
                sent += len(chunk.text)
            final = chunk if chunk.finish_reason else final
        reason = openai.finish_reason(final) if final else "stop"
        last = openai.text_chunk(rid, req.model, "", reason)
        last["timings"] = openai.timings(final)
        await sse.send(response, last)
        if _include_usage(body):
            usage = openai.usage_chunk(rid, req.model, "text_completion", gen.prompt_tokens, final)
            await sse.send(response, usage)
        await sse.done(response)
    except (ConnectionResetError, ConnectionError):
        cancel.set()
    except ImpetusError as exc:
        await _stream_error(response, exc)
    _log(request, req.model, gen.prompt_tokens, final)
    return response


async def embeddings(request: web.Request) -> web.Response:
    model, texts, fmt = openai.embedding_request(await read_json(request))
    vectors, tokens = await blocking(request, request.app[MANAGER].embed, model, texts)
    return web.json_response(openai.embeddings(model, vectors, fmt, tokens))


def _model_entries(request: web.Request) -> list[dict[str, Any]]:
    manager = request.app[MANAGER]
    loaded = {e.model.name: e for e in manager.loaded()}
    entries = []
    for model in manager.available():
        entry = loaded.get(model.name)
        try:
            n_ctx: int | None = entry.plan.n_ctx if entry else manager.plan(model.name).n_ctx
        except ImpetusError:
            n_ctx = None  # e.g. too large for this machine: still listed, without a context
        entries.append(
            {
                "id": model.name,
                "object": "model",
                "created": int(model.created or 0),
                "owned_by": model.origin,
                "context_length": n_ctx,
                "format": model.format,
                "quantization": model.quantization,
                "loaded": entry is not None,
            }
        )
    return entries


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": await blocking(request, _model_entries, request)}
    )


async def health(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "loaded": [e.model.name for e in manager.loaded()],
            "uptime_s": round(time.time() - request.app[STARTED], 1),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    entries = manager.loaded()
    gauges = {
        "loaded_models": ("Models in memory.", [("", float(len(entries)))]),
        "model_planned_bytes": (
            "Planned bytes per loaded model.",
            [(f'model="{e.model.name}"', float(e.plan.total_bytes)) for e in entries],
        ),
        "model_resident_bytes": (
            "Bytes the backend reports per loaded model.",
            [(f'model="{e.model.name}"', float(e.engine.memory_bytes)) for e in entries],
        ),
        "memory_budget_bytes": ("The model memory budget.", [("", float(manager.memory_probe()))]),
    }
    return web.Response(
        text=manager.metrics.prometheus(gauges),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def status(request: web.Request) -> web.Response:
    return web.json_response(await blocking(request, request.app[MANAGER].status))


async def events(request: web.Request) -> web.StreamResponse:
    subscription = request.app[MANAGER].bus.subscribe()
    response = await sse.open_stream(request)
    try:
        while not _client_gone(request):
            event = await blocking(request, subscription.get, 1.0)
            if event is not None:
                await sse.send(response, event.to_dict())
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        subscription.close()
    return response


def _model_param(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise ImpetusError('The body must be {"model": NAME}.', param="model")
    return body["model"]


async def load(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = _model_param(body)
    keep_alive = openai.keep_alive(body)
    plan = await blocking(
        request, request.app[MANAGER].load, name, pin=body.get("pin") is True, keep_alive=keep_alive
    )
    return web.json_response(
        {
            "model": name,
            "loaded": True,
            "n_ctx": plan.n_ctx,
            "n_parallel": plan.n_parallel,
            "planned_bytes": plan.total_bytes,
            "notes": list(plan.notes),
        }
    )


async def unload(request: web.Request) -> web.Response:
    name = _model_param(await read_json(request))
    done = await blocking(request, request.app[MANAGER].unload, name)
    return web.json_response({"model": name, "unloaded": done})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/impetus/status", status)
    app.router.add_get("/impetus/events", events)
    app.router.add_post("/impetus/load", load)
    app.router.add_post("/impetus/unload", unload)
