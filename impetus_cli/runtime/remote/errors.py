"""What can go wrong with an upstream, as the errors a client sees in its own dialect.

- The upstream refused the request (a 4xx): its status, code and message pass through, so a
  client sees what it would have seen talking to the upstream itself.
- Unreachable, a 5xx, a broken stream: 502 ``upstream_error``.
- No first byte (or no next chunk) within the upstream's timeout: 504 ``upstream_timeout``.
- Marked down and waiting for its next probe: 503 ``upstream_down`` with Retry-After, at once.

Messages name the upstream and never carry its key or request headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from impetus_cli.errors import ContextLengthExceeded, ImpetusError, ModelNotFound


class UpstreamError(ImpetusError):
    """The upstream failed: unreachable, a 5xx, or a stream that broke."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamDown(ImpetusError):
    """A request to an upstream marked down: refused without trying, until its next probe."""

    status = 503
    type = "server_error"
    code = "upstream_down"

    def __init__(self, name: str, reason: str, retry_after: int):
        super().__init__(
            f"The remote {name} is down ({reason}); retrying it in {retry_after} s.",
            "Retry later, or use a local model.",
        )
        self.retry_after = retry_after


class UpstreamRejected(ImpetusError):
    """An upstream's 4xx (or its 503 with Retry-After), passed through: status, type, code,
    param and message as the upstream gave them."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message, param=param)
        self.status = status
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code
        if retry_after is not None:
            self.retry_after = retry_after


_CTX = re.compile(r"maximum context length is (\d+) tokens", re.IGNORECASE)
# vLLM, OpenAI and impetus word the prompt's size in one of these ways.
_PROMPT = re.compile(
    r"(\d+) in the messages|messages resulted in (\d+)|request has (\d+) input"
    r"|prompt (?:has|contains|is) (\d+)",
    re.IGNORECASE,
)


def _detail(body: bytes) -> Mapping[str, Any]:
    """The ``error`` object of an error body (OpenAI's, or a bare ``{"error": "text"}``)."""
    try:
        data = json.loads(body.decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    if not isinstance(data, Mapping):
        return {}
    error = data.get("error", data)
    if isinstance(error, str):
        return {"message": error}
    return error if isinstance(error, Mapping) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def context_exceeded(detail: Mapping[str, Any], message: str) -> ContextLengthExceeded | None:
    """A 400 that says the prompt alone is longer than the upstream's context (llama-server's
    numbers, or the wording of vLLM, OpenAI and impetus), in the words clients act on; None
    for anything else (a max_tokens too large for what is left is not this)."""
    n_ctx, n_prompt = detail.get("n_ctx"), detail.get("n_prompt_tokens")
    if not (isinstance(n_ctx, int) and isinstance(n_prompt, int)):
        ctx, prompt = _CTX.search(message), _PROMPT.search(message)
        if not (ctx and prompt):
            return None
        n_ctx = int(ctx.group(1))
        n_prompt = int(next(g for g in prompt.groups() if g is not None))
    return ContextLengthExceeded(n_ctx, n_prompt) if n_prompt >= n_ctx else None


def rejected(name: str, status: int, body: bytes, retry_after: str | None) -> ImpetusError:
    """The error for an upstream's non-2xx answer (``name``: the remote's name)."""
    detail = _detail(body)
    message = _text(detail.get("message")) or body.decode("utf-8", "replace").strip()[:500]
    message = message or f"HTTP {status}"
    code = detail.get("code")
    code = str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None
    if status >= 500 and status != 503:
        return UpstreamError(f"The remote {name} failed ({status}): {message}")
    too_long = context_exceeded(detail, message) if status == 400 else None
    if too_long is not None:
        return too_long
    if status == 404 and code in (None, "model_not_found"):
        return ModelNotFound(f"The remote {name}: {message}")
    retry = int(retry_after) if retry_after and retry_after.strip().isdigit() else None
    return UpstreamRejected(
        status,
        message,
        type_=_text(detail.get("type")),
        code=code,
        param=_text(detail.get("param")),
        retry_after=retry if status in (429, 503) else None,
    )
