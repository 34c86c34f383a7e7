"""The aiohttp application: factory, middlewares (errors, auth, CORS, access log) and shutdown.

Handlers live in routes.py and only translate; every error, ours or aiohttp's, leaves here in
the OpenAI shape ``{"error": {"message", "type", "param", "code"}}`` with the right status.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.manager import ModelManager
from impetus_cli.server import routes
from impetus_cli.server.keys import EXECUTOR, MANAGER, REQUEST_LOG, SETTINGS, STARTED
from impetus_cli.server.openai import error_body

log = logging.getLogger("impetus.server")
MAX_BODY = 32 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/health",)


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(message, type_, code, param), status=status, headers=headers
    )


def from_impetus(exc: ImpetusError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else None
    message = exc.message if not exc.hint or exc.status >= 500 else f"{exc.message} {exc.hint}"
    return error_response(exc.status, message, exc.type, exc.code, exc.param, headers)


HTTP_CODES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "invalid_request_error",
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ImpetusError as exc:
        return from_impetus(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            413: f"Request body too large (limit {MAX_BODY // 2**20} MB).",
            404: f"Unknown route {request.method} {request.path}.",
        }.get(exc.status, exc.reason)
        return error_response(
            exc.status,
            message,
            HTTP_CODES.get(exc.status, "invalid_request_error"),
            HTTP_CODES.get(exc.status) if exc.status != 400 else None,
        )
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:  # a bug: logged with its traceback, answered in the OpenAI shape
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            500, "Internal server error; see the server log.", "server_error", "internal_error"
        )


def auth_middleware(api_key: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if api_key is None or request.path in OPEN_PATHS or request.method == "OPTIONS":
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        given = (
            auth[7:].strip()
            if auth[:7].lower() == "bearer "
            else request.headers.get("x-api-key") or request.headers.get("api-key") or ""
        )
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            return error_response(
                401, "Invalid or missing API key.", "invalid_request_error", "invalid_api_key"
            )
        return await handler(request)

    return check


def cors_middleware(origins: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if allowed and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin or "*"
            response.headers["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, x-api-key, api-key"
            )
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return response

    return cors


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    response = await handler(request)
    request.app[MANAGER].metrics.count_request(routes.endpoint_name(request.path), response.status)
    if request.path.startswith("/v1/") or response.status >= 400:
        log.info(
            "%s %s %d %.0f ms %s",
            request.method,
            request.path,
            response.status,
            (time.perf_counter() - start) * 1000,
            request.get(REQUEST_LOG, ""),
        )
    return response


async def fallback(request: web.Request) -> web.StreamResponse:
    """`/v1//models` (a base URL with a trailing slash) is `/v1/models`; else 404/405."""
    if "//" in request.path:
        clone = request.clone(rel_url=request.rel_url.with_path(re.sub("/{2,}", "/", request.path)))
        match = await request.app.router.resolve(clone)
        if match.http_exception is None and match.handler is not fallback:
            return await match.handler(clone)
    if request.path in routes.KNOWN_PATHS:
        return error_response(
            405,
            f"{request.method} is not allowed on {request.path}.",
            "invalid_request_error",
            "method_not_allowed",
        )
    return error_response(
        404, f"Unknown route {request.method} {request.path}.", "invalid_request_error", "not_found"
    )


def make_app(manager: ModelManager, settings: Settings) -> web.Application:
    middlewares = [errors_middleware, access_middleware, auth_middleware(settings.api_key)]
    if settings.cors_origins:
        middlewares.insert(0, cors_middleware(settings.cors_origins))
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[MANAGER] = manager
    app[SETTINGS] = settings
    app[STARTED] = time.time()
    routes.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", fallback)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """A thread pool for blocking manager calls; at shutdown, models unload."""
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="impetus-worker")
    app[EXECUTOR] = executor
    yield
    app[MANAGER].close()
    executor.shutdown(wait=False, cancel_futures=True)


def dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
