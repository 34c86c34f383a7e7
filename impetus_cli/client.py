"""A small synchronous client of a running `impetus serve` (or any OpenAI-compatible server).

Standard library only (urllib), so `impetus ps`, `chat --url`, `bench --server` and the
dashboard stay light. Connection failures become ServerUnreachable with a hint.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from impetus_cli.errors import ImpetusError, ModelNotFound, ServerUnreachable

if TYPE_CHECKING:
    from impetus_cli.runtime.status import ServerStatus


class ImpetusClient:
    """``base_url`` may be the server root or its `/v1` URL."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0):
        root = base_url.rstrip("/")
        self.root = root.removesuffix("/v1")
        self.base_url = self.root
        self.api_key = api_key
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.root + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable(
                f"Cannot reach {self.root}: {reason}.",
                "Start it with `impetus serve` (or pass --url).",
            ) from None

    def _error(self, exc: urllib.error.HTTPError) -> ImpetusError:
        try:
            detail = json.loads(exc.read() or b"{}").get("error") or {}
        except ValueError:
            detail = {}
        message = detail.get("message") or f"HTTP {exc.code}"
        if exc.code == 404 and detail.get("code") == "model_not_found":
            return ModelNotFound(message)
        error = ImpetusError(message)
        error.status, error.code = exc.code, detail.get("code")
        return error

    def _json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        with self._request(method, path, body, timeout=timeout) as reply:
            return json.loads(reply.read() or b"null")

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health", timeout=5)

    def status(self) -> ServerStatus:
        from impetus_cli.runtime.status import ServerStatus

        return ServerStatus.from_json(self._json("GET", "/impetus/status", timeout=5))

    def models(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/models", timeout=30).get("data") or [])

    def load(self, name: str, keep_alive: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": name}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return self._json("POST", "/impetus/load", body)

    def unload(self, name: str) -> dict[str, Any]:
        return self._json("POST", "/impetus/unload", {"model": name})

    def pull(self, name: str, progress: Callable[[int, int], None]) -> str:
        """Pull on the server (its /impetus/pull, streamed): ``progress(done, total)`` per line;
        the name pulled, or the server's error raised."""
        done: dict[str, tuple[int, int]] = {}
        with self._request(
            "POST", "/impetus/pull", {"model": name, "stream": True}, timeout=600
        ) as r:
            for raw in r:
                event = json.loads(raw or b"{}")
                if event.get("error"):
                    raise ImpetusError(str(event["error"]))
                if "completed" in event and event.get("digest"):
                    done[event["digest"]] = (int(event["completed"]), int(event.get("total") or 0))
                    progress(sum(d for d, _ in done.values()), sum(t for _, t in done.values()))
        return name

    def remove(self, name: str) -> None:
        """Remove a pulled model on the server (its /impetus/rm)."""
        self._request("POST", "/impetus/rm", {"model": name}).close()

    def _sse(self, path: str, body: Any = None, method: str = "POST") -> Iterator[dict[str, Any]]:
        with self._request(method, path, body) as reply:
            for raw in reply:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if isinstance(event, dict) and "error" in event:
                    raise ImpetusError(str((event["error"] or {}).get("message") or event["error"]))
                yield event

    def chat_stream(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Chunks of a streamed chat completion (OpenAI shape)."""
        return self._sse(
            "/v1/chat/completions", {"model": model, "messages": messages, "stream": True, **params}
        )

    def events(self) -> Iterator[dict[str, Any]]:
        return self._sse("/impetus/events", method="GET")
