"""Errors in the caller's dialect. Each API answers failures in its own shape (OpenAI's
``{"error": {...}}``, Anthropic's ``{"type": "error", ...}``, Ollama's ``{"error": "..."}``);
the error middleware picks the shape by the request's path, so even a 401, 404 or 413 raised
before any handler runs reads right to the client that sent it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from impetus_cli.errors import ImpetusError
from impetus_cli.server.http import json_response


@dataclass(frozen=True)
class ApiError:
    status: int
    message: str
    type: str  # OpenAI's error type: invalid_request_error, server_error, ...
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None

    @classmethod
    def of(cls, exc: ImpetusError) -> ApiError:
        message = exc.message if not exc.hint or exc.status >= 500 else f"{exc.message} {exc.hint}"
        retry = getattr(exc, "retry_after", None)
        return cls(exc.status, message, exc.type, exc.code, exc.param, retry)


Shape = Callable[[ApiError], Any]


def openai_shape(e: ApiError) -> dict[str, Any]:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


# (path prefix, shape): the first match wins; OpenAI's shape for everything else.
SHAPES: list[tuple[str, Shape]] = []


def register_shape(prefix: str, shape: Shape) -> None:
    if (prefix, shape) not in SHAPES:
        SHAPES.append((prefix, shape))


def shape_for(path: str) -> Shape:
    return next((shape for prefix, shape in SHAPES if path.startswith(prefix)), openai_shape)


def error_response(path: str, error: ApiError) -> web.Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return json_response(shape_for(path)(error), status=error.status, headers=headers)
