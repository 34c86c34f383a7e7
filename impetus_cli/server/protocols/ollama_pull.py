"""/api/pull's stream: our pull (runtime/download.py) in a worker thread, its progress sent as
Ollama's NDJSON lines: ``{"status": "pulling manifest"}``, then per file ``{"status",
"digest", "total", "completed"}`` (a few per second at most), our notes as statuses, and last
``{"status": "success"}``, or ``{"error": "..."}`` as Ollama reports a failed pull (codex --oss
reads the error from the stream; the status is already 200 by then)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.download import PullProgress
from impetus_cli.server.errors import ApiError
from impetus_cli.server.keys import EXECUTOR
from impetus_cli.server.protocols.ollama_render import NDJSON, line

log = logging.getLogger("impetus.server")
PROGRESS_EVERY_S = 0.25  # per file; the last byte of a file is always reported

Post = Callable[[Any], None]


class Throttle:
    """A pull's progress callback (called in the download thread): at most one line per file
    every PROGRESS_EVERY_S, and always the line that completes a file."""

    def __init__(self, post: Post):
        self.post = post
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, p: PullProgress) -> None:
        now = time.monotonic()
        finished = p.total is not None and p.downloaded >= p.total
        with self.lock:
            if not finished and now - self.last.get(p.filename, -1e9) < PROGRESS_EVERY_S:
                return
            self.last[p.filename] = now
        entry: dict[str, Any] = {"status": f"pulling {p.filename}", "digest": p.filename}
        if p.total is not None:
            entry["total"] = p.total
        entry["completed"] = p.downloaded
        self.post(entry)


def run_pull(name: str, settings: Settings, post: Post) -> None:
    """The whole pull, its every outcome posted as a line, then None (the end)."""
    from impetus_cli.runtime.download import pull

    try:
        pull(name, settings, Throttle(post), say=lambda text: post({"status": text}))
        post({"status": "success"})
    except ImpetusError as exc:
        post({"error": ApiError.of(exc).message})
    except Exception:  # a bug: logged with its traceback, reported without it
        log.exception("pull of %s failed", name)
        post({"error": "The pull failed; see the server log."})
    finally:
        post(None)


async def stream_pull(request: web.Request, name: str, settings: Settings) -> web.StreamResponse:
    """Pull ``name``, streaming its progress. A client that leaves does not stop the pull: it
    finishes (or fails) in its thread, and the next pull finds the model here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def post(item: Any) -> None:
        # RuntimeError: the loop closed during shutdown, nobody is listening.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
    await response.prepare(request)
    loop.run_in_executor(request.app[EXECUTOR], run_pull, name, settings, post)
    with contextlib.suppress(ConnectionResetError, ConnectionError):
        await response.write(line({"status": "pulling manifest"}))
        while (item := await queue.get()) is not None:
            await response.write(line(item))
        await response.write_eof()
    return response
