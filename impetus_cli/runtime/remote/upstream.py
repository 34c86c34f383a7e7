"""One upstream: its health, its models, and its requests in flight.

A health thread per upstream (so a slow one never delays another) fetches ``/v1/models``: at
start, then every ``REFRESH_S`` while it answers. When it does not (or a request finds it
unreachable), the upstream is marked down, and probed again after 1 s, 2 s, 4 s ... up to its
``retry_max``; meanwhile its requests fail at once with a 503 and Retry-After, without trying
the connection. Listings read the last known models: nothing on a request's path waits on the
network for them. State changes under a small lock, never held during I/O.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from impetus_cli.runtime.remote.config import RemoteConfig
from impetus_cli.runtime.remote.errors import UpstreamDown
from impetus_cli.runtime.remote.http import NoAnswer, Pool, Target, Unreachable, exchange
from impetus_cli.runtime.status import RemoteStatus

log = logging.getLogger("impetus.remote")
REFRESH_S = 30.0  # how often an upstream that answers is asked for its models again
PROBE_TIMEOUT_S = 10.0
State = Literal["unknown", "up", "down"]
# Where servers say how long a context their model has, in the order we trust them: impetus,
# vLLM and SGLang (max_model_len), LM Studio's REST API, llama-server (meta.n_ctx_train).
CONTEXT_KEYS = ("context_length", "max_model_len", "loaded_context_length", "max_context_length")


@dataclass(frozen=True)
class RemoteModel:
    """A model an upstream serves: its id there, and its context when the upstream says."""

    id: str
    context_length: int | None = None


def context_of(entry: Mapping[str, Any]) -> int | None:
    meta = entry.get("meta")
    candidates = [entry.get(k) for k in CONTEXT_KEYS]
    candidates.append(meta.get("n_ctx_train") if isinstance(meta, Mapping) else None)
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def parse_models(data: Any, patterns: Sequence[str]) -> tuple[RemoteModel, ...]:
    """``/v1/models`` (OpenAI's list, or a bare list) -> the models the filter lets through."""
    entries = data.get("data") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise ValueError("no model list in the answer")
    models = []
    for entry in entries:
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str) and entry["id"]:
            model = RemoteModel(entry["id"], context_of(entry))
            if not patterns or any(fnmatch.fnmatchcase(model.id, p) for p in patterns):
                models.append(model)
    return tuple(models)


def merge_contexts(models: tuple[RemoteModel, ...], data: Any) -> tuple[RemoteModel, ...]:
    """Contexts from LM Studio's ``/api/v0/models`` for models that ``/v1/models`` listed
    without one."""
    found = {m.id: m.context_length for m in parse_models(data, ())}
    return tuple(m if m.context_length else RemoteModel(m.id, found.get(m.id)) for m in models)


class Upstream:
    """One configured upstream, its pool of connections and its health."""

    def __init__(self, config: RemoteConfig, refresh_s: float = REFRESH_S):
        self.config = config
        self.name = config.name
        self.pool = Pool(Target.of(config.url), config.connect_timeout)
        self.refresh_s = refresh_s
        self.state: State = "unknown"
        self.models: tuple[RemoteModel, ...] = ()
        self.last_error: str | None = None
        self.checked_at = 0.0  # wall time of the last probe
        self.in_flight = 0
        self.requests = 0
        self._first_retry = min(1.0, config.retry_max)
        self._backoff = self._first_retry
        self._next_probe = 0.0  # monotonic
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- requests ---------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """Headers of every request to this upstream: its key (read from the environment
        now, so a rotated key is picked up) goes here and nowhere else."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def check_up(self) -> None:
        """Raise UpstreamDown at once while the upstream is down."""
        with self._lock:
            if self.state != "down":
                return
            wait = max(1, math.ceil(self._next_probe - time.monotonic()))
            reason = self.last_error or "unreachable"
        raise UpstreamDown(self.name, reason, wait)

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.requests += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def find(self, model: str) -> RemoteModel | None:
        return next((m for m in self.models if m.id == model), None)

    def allowed(self, model: str) -> bool:
        patterns = self.config.models
        return not patterns or any(fnmatch.fnmatchcase(model, p) for p in patterns)

    # -- health -----------------------------------------------------------------------------

    def mark_down(self, reason: str) -> None:
        """Unreachable: refuse requests until a probe succeeds; probe after the backoff."""
        with self._lock:
            was = self.state
            self.state, self.last_error = "down", reason
            if was != "down":
                self._backoff = self._first_retry
                self._next_probe = time.monotonic() + self._backoff
        if was != "down":
            log.warning("remote %s (%s) is down: %s", self.name, self.config.url, reason)
            self._wake.set()

    def _mark_up(self, models: tuple[RemoteModel, ...]) -> None:
        with self._lock:
            was = self.state
            self.state, self.models, self.last_error = "up", models, None
            self._backoff = self._first_retry
            self._next_probe = time.monotonic() + self.refresh_s
        if was != "up":
            log.info("remote %s (%s) is up: %d model(s)", self.name, self.config.url, len(models))

    def _probe_failed(self, reason: str) -> None:
        with self._lock:
            first = self.state != "down"
            self.state, self.last_error = "down", reason
            self._next_probe = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.config.retry_max)
        if first:
            log.warning("remote %s (%s) is down: %s", self.name, self.config.url, reason)

    def probe(self) -> None:
        """Ask for the models now: up with them, or down with the reason."""
        self.checked_at = time.time()
        try:
            models = parse_models(self._get_json("/models"), self.config.models)
            if models and not any(m.context_length for m in models):
                models = self._lmstudio_contexts(models)
        except (Unreachable, NoAnswer) as exc:
            return self._probe_failed(str(exc) or exc.__class__.__name__)
        except ValueError as exc:
            return self._probe_failed(f"/models: {exc}")
        self._mark_up(models)

    def _get_json(self, path: str, prefix: str | None = None) -> Any:
        """GET a JSON document on a connection of its own (a probe never waits behind a
        request). ValueError when the answer is not a 200 with JSON."""
        t = self.pool.target
        target = t if prefix is None else Target(t.scheme, t.host, t.port, prefix)
        pool = Pool(target, self.config.connect_timeout, size=0)
        headers = {**self.headers(), "Accept": "application/json"}
        timeout = min(PROBE_TIMEOUT_S, self.config.timeout)
        ex = exchange(pool, "GET", path, None, headers, timeout)
        try:
            try:
                raw = ex.read(8 * 1024 * 1024)
            except TimeoutError:
                raise NoAnswer(f"no answer within {timeout:g} s") from None
            except OSError as exc:
                raise Unreachable(str(exc)) from None
            if ex.status in (401, 403):
                raise ValueError(f"HTTP {ex.status}: the upstream refuses our key (api_key_env)")
            if ex.status != 200:
                raise ValueError(f"HTTP {ex.status}")
            try:
                return json.loads(raw)
            except ValueError:
                raise ValueError("the answer is not JSON") from None
        finally:
            ex.close()

    def _lmstudio_contexts(self, models: tuple[RemoteModel, ...]) -> tuple[RemoteModel, ...]:
        """LM Studio lists contexts only in its own REST API: ask it, best effort."""
        root_prefix = self.pool.target.prefix.removesuffix("/v1")
        try:
            return merge_contexts(models, self._get_json("/api/v0/models", root_prefix))
        except (Unreachable, NoAnswer, ValueError):
            return models

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                wait = self._next_probe - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            self.probe()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"impetus-remote-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.pool.close()

    def snapshot(self) -> RemoteStatus:
        """Its state as the status snapshot shows it (no key, no headers)."""
        with self._lock:
            retry = self._next_probe - time.monotonic() if self.state == "down" else None
            return RemoteStatus(
                name=self.name,
                url=self.config.url,
                state=self.state,
                models=tuple(f"{self.name}/{m.id}" for m in self.models),
                last_error=self.last_error,
                in_flight=self.in_flight,
                requests=self.requests,
                retry_in_s=None if retry is None else max(0.0, round(retry, 1)),
                checked_at=self.checked_at,
            )
