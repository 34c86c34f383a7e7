"""HTTP to an upstream with the standard library (``http.client``), in the worker thread that
serves the request.

- ``Pool``: keep-alive connections to one upstream, each used by one request at a time (no
  TCP or TLS handshake per request); a reused connection the upstream had closed is replaced
  once, transparently.
- ``Exchange``: one request's response: its status, then its body line by line, each read
  bounded by the upstream's timeout (first byte, then between chunks).
- ``Watchdog``: one thread that shuts down the socket of an exchange whose cancel flag is set
  (the client hung up), waking the thread blocked reading it; the upstream sees its client go
  and stops generating.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_BODY = 64 * 1024 * 1024  # a whole (non-streamed) answer, at most
MAX_LINE = 16 * 1024 * 1024  # one line of a stream, at most


class Unreachable(Exception):
    """No connection: refused, unknown host, reset, or a connect timeout."""


class NoAnswer(Exception):
    """Connected, but no byte within the timeout."""


@dataclass(frozen=True)
class Target:
    """Where an upstream listens, from its base URL."""

    scheme: str
    host: str
    port: int
    prefix: str  # the base URL's path, e.g. "/v1"

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname or "localhost", port, parts.path.rstrip("/"))


class Pool:
    """Idle keep-alive connections to one upstream (at most ``size`` kept)."""

    def __init__(self, target: Target, connect_timeout: float, size: int = 8):
        self.target = target
        self.connect_timeout = connect_timeout
        self.size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def new(self) -> http.client.HTTPConnection:
        t = self.target
        if t.scheme == "https":
            context = ssl.create_default_context()
            return http.client.HTTPSConnection(
                t.host, t.port, timeout=self.connect_timeout, context=context
            )
        return http.client.HTTPConnection(t.host, t.port, timeout=self.connect_timeout)

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.new(), False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Exchange:
    """One request and its response. ``close(reuse=True)`` gives the connection back to the
    pool when the whole body was read; anything else closes it."""

    def __init__(self, pool: Pool, conn: http.client.HTTPConnection, timeout: float):
        self.pool, self.conn, self.timeout = pool, conn, timeout
        self.response: http.client.HTTPResponse | None = None
        self.aborted = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def status(self) -> int:
        return self.response.status if self.response is not None else 0

    def header(self, name: str) -> str | None:
        return self.response.getheader(name) if self.response is not None else None

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
        """Connect (bounded by the connect timeout), send, and read the status and headers
        (bounded by the timeout). Raises Unreachable or NoAnswer."""
        try:
            if self.conn.sock is None:
                self.conn.connect()
                # http.client sends the headers and the body in two writes: without this,
                # Nagle's algorithm holds the body until the upstream acknowledges the headers.
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
        except OSError as exc:  # refused, unknown host, unreachable, connect timeout
            raise Unreachable(_reason(exc)) from None
        try:
            self.conn.sock.settimeout(self.timeout)
            self.conn.request(method, self.pool.target.prefix + path, body, headers)
            self.response = self.conn.getresponse()
        except TimeoutError:
            raise NoAnswer(f"no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(_reason(exc)) from None

    def lines(self) -> Iterator[bytes]:
        """The body line by line as it arrives; TimeoutError after ``timeout`` of silence."""
        assert self.response is not None
        while True:
            line = self.response.readline(MAX_LINE)
            if not line:
                return
            yield line

    def read(self, limit: int = MAX_BODY) -> bytes:
        assert self.response is not None
        return self.response.read(limit)

    def drained(self) -> bool:
        """Whether the body was read to its end (the connection can serve another request)."""
        return self.response is not None and self.response.isclosed()

    def abort(self) -> None:
        """From another thread: wake the reader (it sees the end of the stream or an error)."""
        with self._lock:
            self.aborted = True
            sock = None if self._closed else self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self, reuse: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            keep = reuse and not self.aborted and self.drained()
            keep = keep and self.response is not None and not self.response.will_close
        if keep:
            self.pool.give_back(self.conn)
        else:
            self.conn.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection closed without an answer"
    return getattr(exc, "strerror", None) or exc.__class__.__name__


def exchange(
    pool: Pool,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float,
    watchdog: Watchdog | None = None,
    cancel: threading.Event | None = None,
) -> Exchange:
    """Send a request; its response's status and headers are read. A pooled connection the
    upstream closed while idle is replaced by a new one, once."""
    for attempt in range(2):
        conn, reused = pool.take()
        ex = Exchange(pool, conn, timeout)
        if watchdog is not None and cancel is not None:
            watchdog.watch(cancel, ex)
        try:
            ex.send(method, path, body, headers)
            return ex
        except Unreachable:
            ex.close()
            if watchdog is not None:
                watchdog.forget(ex)
            if not reused or attempt or (cancel is not None and cancel.is_set()):
                raise
        except BaseException:
            ex.close()
            if watchdog is not None:
                watchdog.forget(ex)
            raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class Watchdog:
    """Aborts watched exchanges whose cancel flag is set (checked every ``period`` s)."""

    def __init__(self, period: float = 0.1):
        self.period = period
        self._watched: dict[int, tuple[threading.Event, Exchange]] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def watch(self, cancel: threading.Event, ex: Exchange) -> None:
        with self._cond:
            self._watched[id(ex)] = (cancel, ex)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="impetus-remote-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def forget(self, ex: Exchange) -> None:
        with self._cond:
            self._watched.pop(id(ex), None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watched and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                gone = [(k, ex) for k, (cancel, ex) in self._watched.items() if cancel.is_set()]
                for key, _ in gone:
                    del self._watched[key]
            for _, ex in gone:
                ex.abort()
            with self._cond:
                self._cond.wait(self.period)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
