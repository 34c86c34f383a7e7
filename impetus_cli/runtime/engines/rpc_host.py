"""A GGUF model split across RPC workers, run in a child process behind the Engine protocol.

Why a process: llama.cpp's RPC client aborts the whole process (GGML_ABORT) when a worker's
connection breaks, and waits forever on one that stops answering. In a child, that ends only
the child: the requests it was running fail with ``WorkerUnavailable`` (a 503 with
Retry-After), the serving process and its other models carry on, and the model is marked down
(``failure``) until its workers answer again; the next request then loads it again.

The parent talks to the child over a socket pair (``multiprocessing.connection`` framing):
calls (tokenize, render, embed...) and their replies, and per generation the chunks the
child's own LlamaEngine produces. The child is engines/rpc_child.py.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from impetus_cli.errors import ContextLengthExceeded, EngineError, ImpetusError
from impetus_cli.runtime import rpc
from impetus_cli.runtime.engines.base import relay
from impetus_cli.runtime.engines.rpc_child import MODULE as CHILD_MODULE
from impetus_cli.runtime.engines.rpc_child import unpack_error
from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    ToolSpec,
)

log = logging.getLogger("impetus.rpc")
SILENT_S = 30.0  # a request with no news for this long: check that its workers still answer
WATCH_S = 0.05  # how often cancellations are forwarded to the child


class _Child:
    """The child process and the one connection to it: calls, streams, and its death."""

    def __init__(
        self, process: subprocess.Popen[bytes], conn: Connection, endpoints: Sequence[str]
    ):
        self.process, self.conn, self.endpoints = process, conn, tuple(endpoints)
        self.failure: str | None = None
        self._closing = False
        self._ended = False  # the reader saw the end: nothing more will be answered
        self.last_heard = time.monotonic()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.SimpleQueue[Any]] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=12)
        self._lock = threading.Lock()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)

    @classmethod
    def spawn(cls, plan: LoadPlan, info: ModelInfo) -> tuple[_Child, dict[str, Any]]:
        parent, child = socket.socketpair()
        path = _package_root() + os.pathsep + os.environ.get("PYTHONPATH", "")
        process = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE, str(child.fileno())],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # No gdb backtrace on llama.cpp's abort: seconds of noise instead of its message.
            env={**os.environ, "PYTHONPATH": path, "GGML_NO_BACKTRACE": "1"},
        )
        child.close()
        host = cls(process, Connection(parent.detach()), plan.rpc_workers)
        host._stderr_reader.start()
        host.conn.send(("load", plan, info))
        # Loading sends the workers their layers over the network: minutes for a big model.
        while not host.conn.poll(1.0) and process.poll() is None:
            host._check_workers()
        try:
            kind, payload = host.conn.recv()
        except (EOFError, OSError):
            raise host._died("while loading") from None
        if kind != "ready":
            process.wait()
            raise unpack_error(payload)
        for target in (host._read, host._watch):
            threading.Thread(target=target, name="impetus-rpc-host", daemon=True).start()
        return host, payload

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)
                if os.environ.get("IMPETUS_DEBUG") == "1":
                    print(line, file=sys.stderr)

    def _died(self, when: str) -> rpc.WorkerUnavailable:
        code = self.process.wait()
        self._stderr_reader.join(5)  # its last lines say why (llama.cpp's abort message)
        said = "; ".join(list(self._stderr)[-2:])
        gone = [e for e in self.endpoints if not _accepts(e, timeout=1.0)] or self.endpoints
        self.failure = (
            f"the RPC worker {' and '.join(gone)} went away: the process holding the split "
            f"ended {when} (exit {code})" + (f"; llama.cpp said: {said}" if said else "")
        )
        return rpc.WorkerUnavailable(
            self.failure[0].upper() + self.failure[1:] + ".",
            "Restart the worker (`impetus worker`); the model loads again on the next request.",
        )

    def _check_workers(self) -> None:
        """After SILENT_S without news, end the child if a worker no longer accepts
        connections: llama.cpp would wait forever on a machine that crashed or left."""
        if time.monotonic() - self.last_heard > SILENT_S:
            self.last_heard = time.monotonic()
            if not all(_accepts(e) for e in self.endpoints):
                self.process.kill()

    # -- the reader, the watcher -------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                self.last_heard = time.monotonic()
                self._deliver(message)
        except (EOFError, OSError):
            pass
        if self._closing:
            error: BaseException = EngineError("The model was unloaded.")
        else:
            error = self._died("while serving")
            log.warning("%s", error)
        with self._lock:
            self._ended = True
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for q in waiting:
            q.put(error)

    def _deliver(self, message: tuple[Any, ...]) -> None:
        kind, key, payload = message
        with self._lock:
            q = self._waiting.get(key)
            if kind in ("reply", "raise") or (kind == "chunk" and payload.finish_reason):
                self._waiting.pop(key, None)
                self._cancels.pop(key, None)
        if q is None:
            return
        if kind == "raise":
            q.put(unpack_error(payload))
        else:
            q.put(payload)

    def _watch(self) -> None:
        """Forward cancellations within WATCH_S; when requests hear nothing for SILENT_S, check
        that the workers still accept connections, and end the child if one does not (a
        machine that crashed or left the network leaves llama.cpp waiting forever)."""
        forwarded: set[int] = set()
        while self.process.poll() is None:
            time.sleep(WATCH_S)
            with self._lock:
                cancels, active = list(self._cancels.items()), bool(self._waiting)
            forwarded &= {key for key, _ in cancels}
            for key, event in cancels:
                if event.is_set() and key not in forwarded:
                    forwarded.add(key)
                    self._send(("cancel", key, None))
            if active:
                self._check_workers()

    # -- calls and streams --------------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        # A send to a dead child fails quietly: the reader sees the end and fails the waiters.
        with self._send_lock, contextlib.suppress(OSError):
            self.conn.send(message)

    def _open(self, cancel: threading.Event | None = None) -> tuple[int, queue.SimpleQueue[Any]]:
        key, q = next(self._ids), queue.SimpleQueue[Any]()
        with self._lock:
            if self._ended:
                raise rpc.WorkerUnavailable(f"The model's RPC split is down: {self.failure}.")
            self._waiting[key] = q
            if cancel is not None:
                self._cancels[key] = cancel
        return key, q

    def call(self, method: str, *args: Any) -> Any:
        key, q = self._open()
        self._send(("call", key, (method, args)))
        answer = q.get()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def stream(
        self,
        tokens: Sequence[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        instructions: int = 0,
    ) -> Iterator[GenerationChunk]:
        key, q = self._open(cancel)
        self._send(("generate", key, (list(tokens), sampling, instructions)))

        def abandon() -> None:
            with self._lock:
                still_running = self._waiting.pop(key, None) is not None
                self._cancels.pop(key, None)
            if still_running:
                self._send(("cancel", key, None))

        yield from relay(q, cancel, abandon)

    def close(self) -> None:
        self._closing = True
        if self.process.poll() is None:
            self._send(("close", 0, None))
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.conn.close()


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


def _accepts(endpoint: str, timeout: float = 3.0) -> bool:
    host, port = rpc.split_endpoint(endpoint)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class SplitEngine:
    """Engine protocol on a GGUF model whose layers are split across RPC workers
    (``plan.placement``), loaded and run in a child process (see the module's docstring)."""

    def __init__(self, plan: LoadPlan, info: ModelInfo):
        self.plan, self.info = plan, info
        self._child: _Child | None = None
        self._meta: dict[str, Any] = {}
        self._load_lock = threading.Lock()

    @classmethod
    def load(cls, plan: LoadPlan, info: ModelInfo) -> SplitEngine:
        engine = cls(plan, info)
        engine._ensure()
        return engine

    def _ensure(self) -> _Child:
        """The running child; after one died, a new one once the workers answer again."""
        with self._load_lock:
            child = self._child
            if child is not None and child.failure is None:
                return child
            # Asked first: llama.cpp aborts the process on a worker it cannot reach.
            rpc.probe_all(self.plan.rpc_workers, self.plan.model.name)
            if child is not None:
                log.info("%s: the RPC workers answer again; loading it again", self.info.path.name)
                child.close()
            rpc.hold(self.plan.rpc_workers, self.plan.model.name)
            try:
                self._child, self._meta = _Child.spawn(self.plan, self.info)
            except BaseException:
                rpc.release(self.plan.rpc_workers, self.plan.model.name)
                raise
            return self._child

    @property
    def failure(self) -> str | None:
        """Why the model is down (a worker went away), until it loads again; else None."""
        return None if self._child is None else self._child.failure

    @property
    def n_ctx(self) -> int:
        return int(self._meta["n_ctx"])

    @property
    def memory_bytes(self) -> int:
        """This machine's part, as planned: the workers hold the rest."""
        return self.plan.total_bytes

    @property
    def special_text(self) -> Any:
        return self._meta.get("special_text")

    @property
    def chat_template(self) -> str | None:
        return self._meta.get("chat_template", self.info.chat_template)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._meta.get("special_tokens") or {})

    @property
    def saves_instructions(self) -> bool:
        return bool(self._meta.get("saves_instructions"))

    def token_text(self, token: int) -> str:
        return str(self._ensure().call("token_text", token))

    def token_bytes(self, token: int) -> bytes:
        return bytes(self._ensure().call("token_bytes", token))

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return list(self._ensure().call("tokenize", text, special))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self._ensure().call("detokenize", list(tokens)))

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        return str(self._ensure().call("render", tuple(messages), tuple(tools)))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return list(self._ensure().call("embed", list(texts)))

    def generate(
        self,
        tokens: Sequence[int],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        instructions: int = 0,
    ) -> Iterator[GenerationChunk]:
        """The checks run now, as LlamaEngine's do; the stream starts when first read."""
        child = self._ensure()
        if not tokens:
            raise ImpetusError("The prompt is empty.", param="messages")
        if len(tokens) > self.n_ctx:
            raise ContextLengthExceeded(self.n_ctx, len(tokens))
        return child.stream(tokens, sampling, cancel or threading.Event(), instructions)

    def close(self) -> None:
        with self._load_lock:
            if self._child is not None:
                self._child.close()
                self._child = None
                rpc.release(self.plan.rpc_workers, self.plan.model.name)
