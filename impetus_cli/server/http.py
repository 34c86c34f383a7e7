"""What every handler needs from HTTP: the JSON body (read, bounded and parsed without
blocking the event loop), blocking calls in the worker pool, and whether the client is still
there. Nothing here knows an API dialect."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from impetus_cli.errors import ImpetusError
from impetus_cli.server.keys import EXECUTOR

T = TypeVar("T")
# Bodies above this are parsed in a worker thread: a 30 MB body would hold the loop for seconds.
PARSE_INLINE = 256 * 1024


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity (they would make our own replies invalid)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImpetusError("The request body is not valid UTF-8.") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ImpetusError("The request body is nested too deeply.") from None
    except ValueError as exc:
        raise ImpetusError(f"The request body is not valid JSON: {exc}.") from None


async def read_json(request: web.Request, translate: Callable[[Any], T] | None = None) -> Any:
    """The body as JSON, passed through ``translate`` (a dialect's parser) when given. Large
    bodies are parsed and translated in a worker thread, so the event loop keeps serving."""
    raw = await request.read()

    def work() -> Any:
        body = parse_json(raw)
        return translate(body) if translate is not None else body

    if len(raw) <= PARSE_INLINE:
        return work()
    return await blocking(request, work)


async def blocking(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR], functools.partial(fn, *args, **kwargs))


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def start_work(
    request: web.Request, cancel: threading.Event, fn: Callable[..., T], *args: Any
) -> T:
    """Run ``fn`` (which may load a model and wait in a queue) in a worker thread. A client
    that hangs up meanwhile sets ``cancel``, so the wait ends; a result nobody will read (the
    handler was cancelled) is closed, so its slot goes back."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(request.app[EXECUTOR], functools.partial(fn, *args))
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.25)
            if done:
                return future.result()
            if client_gone(request):
                cancel.set()
    except asyncio.CancelledError:
        cancel.set()
        future.add_done_callback(_close_unread)
        raise


def _close_unread(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        close = getattr(future.result(), "close", None)
        if callable(close):
            close()


def dumps(data: object) -> str:
    """Our JSON on the wire: compact, UTF-8, and never NaN (``allow_nan=False`` raises)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_response(data: object, status: int = 200, **kwargs: Any) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps, **kwargs)
