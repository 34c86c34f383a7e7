"""Remotes: the upstreams a server proxies, and the requests it sends them.

The ModelManager routes a name ``NAME/MODEL`` whose NAME is a configured upstream here. A chat
or completion becomes a streamed request to the upstream and comes back as a ``Generation`` of
GenerationChunks, so every API dialect of the server renders it as it renders a local model's:
a chunk goes to the client as soon as the upstream sends it. The manager's memory budget and
slots do not apply; the upstream queues its own requests.

A request holds no lock while it talks to its upstream. Its end (finished, failed, or a client
that hung up, whose upstream connection the watchdog closes) is counted in the same metrics
and events as a local model's.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from impetus_cli.errors import ContextLengthExceeded, ImpetusError, ModelNotFound, RequestCancelled
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.generation import Generation, Outcome
from impetus_cli.runtime.metrics import Event, EventBus, Metrics
from impetus_cli.runtime.remote import wire
from impetus_cli.runtime.remote.config import RemoteConfig
from impetus_cli.runtime.remote.errors import UpstreamError, UpstreamTimeout, rejected
from impetus_cli.runtime.remote.http import Exchange, NoAnswer, Unreachable, Watchdog, exchange
from impetus_cli.runtime.remote.stream import DONE, EventDecoder, Reader
from impetus_cli.runtime.remote.upstream import Upstream
from impetus_cli.runtime.status import RemoteStatus, ServerStatus, Throughput
from impetus_cli.runtime.types import ChatRequest, CompletionRequest, GenerationChunk

log = logging.getLogger("impetus.remote")
Body = Callable[[int | None], dict[str, Any]]  # max_tokens (None: the upstream's) -> JSON
DRAIN_S = 0.25  # after [DONE], how long the end of the body may take to keep the connection


@dataclass(frozen=True)
class RemoteEntry:
    """A remote model as listings show it: ``NAME/MODEL`` and what is known of it."""

    id: str
    remote: str
    model: str
    context_length: int | None
    up: bool


class Remotes:
    def __init__(
        self,
        configs: Sequence[RemoteConfig],
        *,
        metrics: Metrics | None = None,
        bus: EventBus | None = None,
        max_tokens: int = 8192,
        start: bool = True,
    ):
        self.upstreams = {c.name: Upstream(c) for c in configs}
        self.metrics = metrics or Metrics()
        self.bus = bus or EventBus()
        self.max_tokens = max_tokens  # a reply's limit when the request sets none
        self.watchdog = Watchdog()
        if start:
            for upstream in self.upstreams.values():
                upstream.start()

    @classmethod
    def of(cls, settings: Settings, metrics: Metrics, bus: EventBus) -> Remotes:
        """The upstreams of ``settings``, counting into a manager's metrics and events."""
        return cls(settings.remote, metrics=metrics, bus=bus, max_tokens=settings.max_tokens)

    # -- names ------------------------------------------------------------------------------

    def owns(self, name: str) -> bool:
        """Whether ``name`` is ``NAME/MODEL`` with NAME a configured upstream."""
        prefix, sep, model = name.partition("/")
        return bool(sep and model) and prefix in self.upstreams

    def route(self, name: str) -> tuple[Upstream, str]:
        """The upstream and its model id for ``NAME/MODEL``; 404 when the upstream's last
        known list or the filter rules it out (Ollama's ``:latest`` is dropped if needed)."""
        prefix, _, model = name.partition("/")
        up = self.upstreams[prefix]
        if up.state == "up" and up.find(model) is None:
            bare = model.removesuffix(":latest")
            if up.find(bare) is not None:
                return up, bare
        if up.allowed(model) and (up.state != "up" or up.find(model) is not None):
            return up, model
        names = [f"{prefix}/{m.id}" for m in up.models]
        raise ModelNotFound(
            f"The remote {prefix} does not serve {model!r}.",
            f"Its models: {', '.join(names[:10])}." if names else None,
            suggestions=tuple(names[:10]),
        )

    # -- requests ---------------------------------------------------------------------------

    def start(
        self, request: ChatRequest | CompletionRequest, cancel: threading.Event | None = None
    ) -> Generation:
        if isinstance(request, ChatRequest):
            return self.start_chat(request, cancel)
        return self.start_completion(request, cancel)

    def start_chat(self, request: ChatRequest, cancel: threading.Event | None = None) -> Generation:
        up, model = self.route(request.model)

        def body(max_tokens: int | None) -> dict[str, Any]:
            return wire.chat_body(request, model, max_tokens)

        limit = request.sampling.max_tokens or self.max_tokens
        return self._start(up, request.model, "/chat/completions", body, limit, "chat", cancel)

    def start_completion(
        self, request: CompletionRequest, cancel: threading.Event | None = None
    ) -> Generation:
        up, model = self.route(request.model)

        def body(max_tokens: int | None) -> dict[str, Any]:
            return wire.completion_body(request, model, max_tokens)

        limit = request.sampling.max_tokens or self.max_tokens
        return self._start(up, request.model, "/completions", body, limit, "completion", cancel)

    def count_chat_tokens(self, request: ChatRequest, cancel: threading.Event | None = None) -> int:
        """A chat request's prompt tokens, as the upstream counts them: the request sent for
        one token, unstreamed, and its usage read (it also warms the upstream's prefix
        cache for the request that usually follows)."""
        up, model = self.route(request.model)
        body = {**wire.chat_body(request, model, 1), "stream": False}
        body.pop("stream_options")
        data = self._call(up, "/chat/completions", body, cancel)
        usage = data.get("usage") if isinstance(data, dict) else None
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not isinstance(prompt, int):
            raise UpstreamError(f"The remote {up.name} did not report the prompt's tokens.")
        return prompt

    def embed(self, name: str, texts: list[str]) -> tuple[list[list[float]], int]:
        up, model = self.route(name)
        data = self._call(up, "/embeddings", wire.embeddings_body(model, texts), None)
        try:
            rows = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UpstreamError(
                f"The remote {up.name} sent embeddings in an unknown shape."
            ) from None
        if len(vectors) != len(texts):
            raise UpstreamError(
                f"The remote {up.name} sent {len(vectors)} vectors for {len(texts)} texts."
            )
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens")
        return vectors, tokens if isinstance(tokens, int) else 0

    def _start(
        self,
        up: Upstream,
        name: str,
        path: str,
        body: Body,
        limit: int,
        kind: Literal["chat", "completion"],
        cancel: threading.Event | None,
    ) -> Generation:
        cancel = cancel or threading.Event()
        started = time.perf_counter()
        up.begin()  # in flight from now: the upstream may be slow to answer at all
        try:
            ex = self._send(up, path, body, limit, cancel)
        except BaseException:
            up.end()
            raise
        self.bus.publish(Event("request_started", name, {"remote": up.name}))
        reader = Reader(up.name, kind, started)
        return Generation(
            self._chunks(ex, reader, cancel, name),
            model=name,
            prompt_tokens=0,  # the upstream says how many, at the end (usage)
            max_tokens=limit,
            cancel=cancel,
            on_end=lambda outcome: self._ended(up, ex, name, outcome),
        )

    def _send(
        self, up: Upstream, path: str, body: Body, limit: int | None, cancel: threading.Event
    ) -> Exchange:
        """POST, and check the answer's status. A 400 about max_tokens (vLLM refuses a
        limit beyond what its context has left) is sent again without it: the reply then
        ends where the context does, as it would here."""
        ex = self._post(up, path, body(limit), cancel)
        if ex.status == 400 and limit is not None:
            raw = self._error_body(ex)
            error = rejected(up.name, 400, raw, None)
            text = raw.decode("utf-8", "replace").lower()
            if isinstance(error, ContextLengthExceeded) or not _about_max_tokens(text):
                raise error
            log.info("remote %s refused max_tokens %d; sent again without it", up.name, limit)
            ex = self._post(up, path, body(None), cancel)
        if not 200 <= ex.status < 300:
            retry_after = ex.header("Retry-After")
            raise rejected(up.name, ex.status, self._error_body(ex), retry_after)
        return ex

    def _post(
        self, up: Upstream, path: str, body: dict[str, Any], cancel: threading.Event
    ) -> Exchange:
        up.check_up()
        data = json.dumps(body, ensure_ascii=False).encode()
        timeout = up.config.timeout
        try:
            return exchange(
                up.pool, "POST", path, data, up.headers(), timeout, self.watchdog, cancel
            )
        except Unreachable as exc:
            if cancel.is_set():
                raise RequestCancelled("The client left before the remote answered.") from None
            up.mark_down(str(exc))
            raise UpstreamError(f"The remote {up.name} is unreachable: {exc}.") from None
        except NoAnswer as exc:
            if cancel.is_set():
                raise RequestCancelled("The client left before the remote answered.") from None
            raise UpstreamTimeout(f"The remote {up.name} did not answer: {exc}.") from None

    def _error_body(self, ex: Exchange) -> bytes:
        try:
            return ex.read(1024 * 1024)
        except OSError:
            return b""
        finally:
            self.watchdog.forget(ex)
            ex.close(reuse=True)

    def _call(
        self, up: Upstream, path: str, body: dict[str, Any], cancel: threading.Event | None
    ) -> Any:
        """An unstreamed request: its JSON answer."""
        ex = self._send(up, path, lambda _: body, None, cancel or threading.Event())
        try:
            raw = ex.read()
        except TimeoutError:
            raise UpstreamTimeout(f"The remote {up.name} stopped answering.") from None
        except OSError as exc:
            raise UpstreamError(f"The remote {up.name}'s answer broke off: {exc}.") from None
        finally:
            self.watchdog.forget(ex)
            ex.close(reuse=True)
        try:
            return json.loads(raw)
        except ValueError:
            raise UpstreamError(f"The remote {up.name} answered with something not JSON.") from None

    # -- a reply ----------------------------------------------------------------------------

    def _chunks(
        self, ex: Exchange, reader: Reader, cancel: threading.Event, name: str
    ) -> Iterator[GenerationChunk]:
        """The reply's chunks as they arrive, then the final one (counters, finish)."""
        counted = 0
        try:
            for event in self._events(ex, reader, cancel):
                yield from reader.feed(event)
                if reader.outputs > counted:
                    self.metrics.count_tokens(name, reader.outputs - counted)
                    counted = reader.outputs
        except TimeoutError:
            if not cancel.is_set():
                raise UpstreamTimeout(
                    f"The remote {reader.name} stopped sending for {ex.timeout:g} s."
                ) from None
        except (OSError, http.client.HTTPException) as exc:
            if not cancel.is_set():
                raise UpstreamError(f"The connection to {reader.name} broke: {exc!r}.") from None
        final = reader.final(cancelled=cancel.is_set())
        if final.completion_tokens > counted:  # the upstream's usage is the true count
            self.metrics.count_tokens(name, final.completion_tokens - counted)
        yield final

    def _events(self, ex: Exchange, reader: Reader, cancel: threading.Event) -> Iterator[Any]:
        """Parsed events until ``[DONE]``; a whole JSON answer (an upstream that does not
        stream) is one event. The end of the body without an end of the reply is an error,
        unless the client left."""
        if "json" in (ex.header("Content-Type") or ""):
            try:
                yield json.loads(ex.read() or b"null")
            except ValueError:
                raise UpstreamError(f"The remote {reader.name} sent a reply not JSON.") from None
            return
        decoder = EventDecoder(reader.name)
        for line in ex.lines():
            for event in decoder.feed(line):
                if event is DONE:
                    return
                yield event
            if cancel.is_set():
                return
        yield from decoder.finish()
        if reader.finish is None and not cancel.is_set():
            raise UpstreamError(f"The remote {reader.name} ended the stream before the reply.")

    def _ended(self, up: Upstream, ex: Exchange, name: str, outcome: Outcome) -> None:
        """A reply's end: the connection goes back to the pool (if whole) or closes, and the
        metrics and events hear of it as of a local model's request."""
        self.watchdog.forget(ex)
        ex.close(reuse=outcome.status == 200 and _drain(ex))
        up.end()
        final = outcome.final
        record = self.metrics.finish(
            name, final.prompt_tokens if final else 0, final, outcome.status
        )
        reason = final.finish_reason if final else None
        data = {**dataclasses.asdict(record), "finish_reason": reason, "remote": up.name}
        self.bus.publish(Event("request_finished", name, data))

    # -- listing and status -----------------------------------------------------------------

    def listing(self) -> list[RemoteEntry]:
        """Every remote model from the upstreams' last known lists (no network here)."""
        return entries(self.upstreams.values())

    def add_to(self, status: ServerStatus) -> ServerStatus:
        """``status`` with the upstreams, and the throughput of remote models that served."""
        remotes = tuple(u.snapshot() for u in self.upstreams.values())
        series = dict(status.throughput.series)
        for entry in self.listing():
            snap = self.metrics.model_snapshot(entry.id)
            if snap["requests"]:
                series[entry.id] = tuple(snap["series"])
        t = status.throughput
        throughput = Throughput(t.window_s, t.bucket_s, series)
        return dataclasses.replace(status, remotes=remotes, throughput=throughput)

    def close(self) -> None:
        for upstream in self.upstreams.values():
            upstream.stop()
        self.watchdog.close()


def probe_now(configs: Sequence[RemoteConfig]) -> tuple[list[RemoteEntry], list[RemoteStatus]]:
    """Ask every upstream for its models now, all at once (`impetus list --remote` without a
    running server): their models, and each upstream's state."""
    upstreams = [Upstream(c) for c in configs]
    threads = [threading.Thread(target=u.probe, daemon=True) for u in upstreams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return entries(upstreams), [u.snapshot() for u in upstreams]


def entries(upstreams: Iterable[Upstream]) -> list[RemoteEntry]:
    """The upstreams' models from their last known lists (no network here)."""
    return [
        RemoteEntry(f"{u.name}/{m.id}", u.name, m.id, m.context_length, u.state != "down")
        for u in upstreams
        for m in u.models
    ]


def _about_max_tokens(text: str) -> bool:
    return "max_tokens" in text or "max_completion_tokens" in text or "context length" in text


def _drain(ex: Exchange) -> bool:
    """Read what is left of a finished stream (the end of its chunked body), briefly, so its
    connection can serve another request; False if it does not come."""
    if ex.drained():
        return True
    try:
        if ex.conn.sock is not None:
            ex.conn.sock.settimeout(DRAIN_S)
        for _ in ex.lines():
            pass
    except (OSError, ImpetusError):
        return False
    return ex.drained()
