"""The middlewares, outermost first: the access log (every request, with its status), CORS
for configured origins, errors (every failure in the caller's dialect), the guard against web
pages (Host, Origin, Content-Type), and the API key."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from impetus_cli.errors import Forbidden, ImpetusError, UnsupportedMediaType
from impetus_cli.runtime.config import Settings
from impetus_cli.server.errors import ApiError, error_response
from impetus_cli.server.keys import MANAGER, REQUEST_LOG

log = logging.getLogger("impetus.server")
MAX_BODY = 32 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/health", "/")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
HTTP_ERRORS = {
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_access_log(endpoint_name: Callable[[str], str]) -> Middleware:
    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        start, status = time.perf_counter(), 499  # 499: the client left before an answer
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            request.app[MANAGER].metrics.count_request(endpoint_name(request.path), status)
            log.info(
                "%s %s %d %.0f ms %s",
                request.method,
                request.path,
                status,
                (time.perf_counter() - start) * 1000,
                request.get(REQUEST_LOG, ""),
            )

    return access


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ImpetusError as exc:
        return error_response(request.path, ApiError.of(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_, code = HTTP_ERRORS.get(exc.status, ("invalid_request_error", None))
        message = {
            413: f"Request body too large (limit {MAX_BODY // 2**20} MB).",
            404: f"Unknown route {request.method} {request.path}.",
        }.get(exc.status, exc.reason)
        return error_response(request.path, ApiError(exc.status, message, type_, code))
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:  # a bug: logged with its traceback, answered in the caller's shape
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            request.path,
            ApiError(
                500, "Internal server error; see the server log.", "server_error", "internal_error"
            ),
        )


def make_guard(settings: Settings) -> Middleware:
    """A page in a browser can reach a loopback server: through DNS rebinding (a foreign Host
    header) or a cross-origin "simple" POST (text/plain, no preflight). Both are refused."""
    check_host = is_loopback(settings.host)
    hosts = LOOPBACK_NAMES | {h.lower() for h in settings.allowed_hosts}
    origins = set(settings.cors_origins)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        where = urlsplit("//" + (request.host or ""))
        if check_host and (where.hostname or "").lower() not in hosts:
            raise Forbidden(
                f"Host {request.host!r} is not this server's name (DNS rebinding is refused).",
                "Use http://127.0.0.1, or start the server with --allowed-host NAME.",
            )
        origin = request.headers.get("Origin")
        if request.method not in SAFE_METHODS:
            if origin is not None and not _origin_allowed(origin, origins, where.port):
                raise Forbidden(
                    f"Requests from the web page {origin!r} are refused.",
                    "Allow it with --cors-origin ORIGIN.",
                )
            if not _json_content(request, from_browser=origin is not None):
                raise UnsupportedMediaType(
                    "The body must be JSON, sent with Content-Type: application/json."
                )
        return await handler(request)

    return guard


def _origin_allowed(origin: str, allowed: set[str], port: int | None) -> bool:
    """Configured origins, and the server's own (same loopback host and port)."""
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return is_loopback(parts.hostname or "") and parts.port == port and port is not None


def _json_content(request: web.Request, *, from_browser: bool) -> bool:
    kind = request.content_type.lower()
    if kind == "application/json" or kind.endswith("+json"):
        return True
    # `curl -d` sends a form content type; only a browser's simple requests are the danger
    forms = ("application/octet-stream", "application/x-www-form-urlencoded")
    return not from_browser and kind in forms


def make_auth(api_key: str | None) -> Middleware:
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
                request.path,
                ApiError(
                    401, "Invalid or missing API key.", "invalid_request_error", "invalid_api_key"
                ),
            )
        return await handler(request)

    return check


def make_cors(origins: tuple[str, ...]) -> Middleware:
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
                "Authorization, Content-Type, x-api-key, api-key, anthropic-version, anthropic-beta"
            )
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        return response

    return cors
