"""The one loop that sends a generation to a client, whatever the API dialect.

A dialect supplies a ``Renderer``: how one reply looks on its wire (the events of a stream, the
body of a whole reply, an error mid-stream). ``respond`` runs the generation in a worker thread
(``pump``), feeds every chunk to the renderer and writes what it returns; it gives the slot
back however the request ends: finished, failed, or abandoned by a client that hung up, even
before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.generation import Generation
from impetus_cli.runtime.summary import StreamSummary
from impetus_cli.runtime.types import GenerationChunk
from impetus_cli.server.http import client_gone, json_response
from impetus_cli.server.keys import ACTIVE, EXECUTOR, REQUEST_LOG, STOPPING

log = logging.getLogger("impetus.server")
_END = object()
HEARTBEAT_S = 5.0  # a renderer's keep-alive event, after this long without output


class ShuttingDown(ImpetusError):
    status = 503
    type = "server_error"
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down.", "Retry in a moment.")
        self.retry_after = 5


class Renderer(Protocol):
    """One reply in one API dialect. Stream methods return encoded events to write."""

    media_type: str  # "text/event-stream", "application/x-ndjson"
    keep_chunks: bool  # whether ``body`` needs every chunk (logprobs)

    def start(self) -> list[bytes]: ...
    def chunk(self, chunk: GenerationChunk) -> list[bytes]: ...
    def end(self, summary: StreamSummary) -> list[bytes]: ...
    def error(self, exc: ImpetusError) -> list[bytes]: ...
    def heartbeat(self) -> list[bytes]: ...
    def body(self, summary: StreamSummary) -> Any: ...


async def pump(
    request: web.Request,
    gen: Generation,
    heartbeat: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[GenerationChunk, None]:
    """Drive ``gen`` in a worker thread; yield its chunks here. Leaving early cancels it;
    close it (``contextlib.aclosing``) so that the worker is done before ``gen`` is closed.
    ``heartbeat`` is awaited after a quiet spell, so it reaches the client while the engine
    is still silent (a long prompt evaluation)."""
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
    quiet_since = time.monotonic()
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=0.25)
            except TimeoutError:
                if client_gone(request) or request.app[STOPPING].is_set():
                    gen.cancel.set()  # e.g. a hang-up during a long prompt evaluation
                elif heartbeat and time.monotonic() - quiet_since > HEARTBEAT_S:
                    await heartbeat()
                    quiet_since = time.monotonic()
                continue
            quiet_since = time.monotonic()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        gen.cancel.set()  # harmless after a normal end; stops the engine after a hang-up
        await worker


async def respond(
    request: web.Request, gen: Generation, renderer: Renderer, *, stream: bool
) -> web.StreamResponse:
    """Send ``gen`` as one whole reply or as a stream; the slot is released on every path."""
    request.app[ACTIVE].add(gen.cancel)
    try:
        if not stream:
            summary = StreamSummary(keep_chunks=renderer.keep_chunks)
            async with contextlib.aclosing(pump(request, gen)) as chunks:
                async for chunk in chunks:
                    summary.add(chunk)
            _log(request, gen, summary)
            if summary.cancelled and request.app[STOPPING].is_set():
                raise ShuttingDown()
            return json_response(renderer.body(summary))
        return await _stream(request, gen, renderer)
    finally:
        request.app[ACTIVE].discard(gen.cancel)
        await asyncio.get_running_loop().run_in_executor(request.app[EXECUTOR], gen.close)


async def _stream(request: web.Request, gen: Generation, renderer: Renderer) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": renderer.media_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    summary = StreamSummary()

    async def beat() -> None:
        await _write(response, renderer.heartbeat())

    try:
        await response.prepare(request)
        await _write(response, renderer.start())
        # aclosing: a failed write leaves the loop with the worker waited for, before
        # respond() closes the generation it may still be running
        async with contextlib.aclosing(pump(request, gen, beat)) as chunks:
            async for chunk in chunks:
                summary.add(chunk)
                await _write(response, renderer.chunk(chunk))
        if summary.cancelled and request.app[STOPPING].is_set():
            raise ShuttingDown()
        await _write(response, renderer.end(summary))
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        gen.cancel.set()  # the client hung up; pump's cleanup already waited for the engine
    except ImpetusError as exc:
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            if response.prepared:
                await _write(response, renderer.error(exc))
                await response.write_eof()
            else:
                raise
    _log(request, gen, summary)
    return response


async def _write(response: web.StreamResponse, events: list[bytes]) -> None:
    for event in events:
        await response.write(event)


def _log(request: web.Request, gen: Generation, summary: StreamSummary) -> None:
    f = summary.final
    if f is not None:
        request[REQUEST_LOG] = (
            f"model={gen.model} prompt={gen.prompt_tokens} cached={f.cached_tokens} "
            f"completion={f.completion_tokens} ttft={f.ttft_s:.2f}s "
            f"{f.generation_tps:.1f} tok/s" + (" stopped: loop" if gen.stopped_by == "loop" else "")
        )
