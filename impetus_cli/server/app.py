"""The aiohttp application: the factory that puts routes and middlewares together, and the
server's lifetime (a worker pool for blocking calls; at shutdown, open streams end cleanly and
models unload)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from impetus_cli import __version__
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.manager import ModelManager
from impetus_cli.server import admin, middleware
from impetus_cli.server.errors import ApiError, error_response
from impetus_cli.server.http import json_response
from impetus_cli.server.keys import (
    ACTIVE,
    EXECUTOR,
    MANAGER,
    SETTINGS,
    STARTED,
    STOPPING,
    SUBSCRIBERS,
)
from impetus_cli.server.protocols import (
    anthropic_routes,
    ollama_routes,
    openai_routes,
    responses_routes,
)

Route = Callable[[web.Request], Awaitable[Any]]
ROUTE_TABLES: list[Mapping[tuple[str, str], Route]] = [
    openai_routes.ROUTES,
    responses_routes.ROUTES,
    anthropic_routes.ROUTES,
    ollama_routes.ROUTES,
    admin.ROUTES,
]
MAX_BODY = middleware.MAX_BODY


def known_paths() -> set[str]:
    return {path for table in ROUTE_TABLES for _, path in table}


def endpoint_name(path: str) -> str:
    """The metrics label of a path: itself when it is a route, else "other"."""
    return path if path in known_paths() else "other"


async def root(request: web.Request) -> web.Response:
    """`HEAD /` and `GET /`: Claude Code checks the server is there before its first turn."""
    return json_response({"name": "impetus", "version": __version__, "status": "ok"})


async def fallback(request: web.Request) -> web.StreamResponse:
    """`/v1//models` (a base URL with a trailing slash) is `/v1/models`; else 404/405."""
    if "//" in request.path:
        clone = request.clone(rel_url=request.rel_url.with_path(re.sub("/{2,}", "/", request.path)))
        match = await request.app.router.resolve(clone)
        if match.http_exception is None and match.handler is not fallback:
            return await match.handler(clone)
    if request.path in known_paths():
        return error_response(
            request.path,
            ApiError(
                405,
                f"{request.method} is not allowed on {request.path}.",
                "invalid_request_error",
                "method_not_allowed",
            ),
        )
    return error_response(
        request.path,
        ApiError(
            404,
            f"Unknown route {request.method} {request.path}.",
            "invalid_request_error",
            "not_found",
        ),
    )


def make_app(manager: ModelManager, settings: Settings) -> web.Application:
    middlewares: list[Any] = [middleware.make_access_log(endpoint_name)]
    if settings.cors_origins:
        middlewares.append(middleware.make_cors(settings.cors_origins))
    middlewares += [
        middleware.errors,
        middleware.make_guard(settings),
        middleware.make_auth(settings.api_key),
    ]
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[MANAGER] = manager
    app[SETTINGS] = settings
    app[STARTED] = time.time()
    active: set[threading.Event] = set()
    app[ACTIVE] = active
    app[SUBSCRIBERS] = [0]
    for table in ROUTE_TABLES:
        for (method, path), handler in table.items():
            app.router.add_route(method, path, handler)
    app.router.add_get("/", root)  # also answers HEAD
    app.router.add_route("*", "/{tail:.*}", fallback)
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_stop_streams)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """A thread pool for blocking manager calls; at shutdown, models unload."""
    app[STOPPING] = asyncio.Event()
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="impetus-worker")
    app[EXECUTOR] = executor
    yield
    await asyncio.get_running_loop().run_in_executor(None, app[MANAGER].close)
    executor.shutdown(wait=False, cancel_futures=True)


async def _stop_streams(app: web.Application) -> None:
    """Shutdown (SIGTERM from launchd or systemd, or Ctrl-C): every generation stops at its
    next token and its stream ends with an error event saying why, so the server exits within
    seconds instead of waiting for replies to finish."""
    app[STOPPING].set()
    active = app[ACTIVE]
    for cancel in list(active):
        cancel.set()
