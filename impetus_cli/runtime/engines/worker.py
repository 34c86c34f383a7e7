"""The thread loop both batching engines run on (llama_batch.Scheduler, mlx_batch.Batcher).

One thread owns the backend's batch. It sleeps until there is work, admits waiting requests as
far as the backend has room for them, runs one step (one decode of every admitted sequence), and
goes round again. Requests come in through ``stream``, from the threads that read them.

An unexpected exception in a step must not end the thread: every consumer would then wait on
its queue forever. The loop catches it, ends every request it holds (admitted or waiting) with
an ``EngineError`` (a 500 in each API's error shape), lets the backend reset what the step may
have left half done, and keeps serving. ``Health`` keeps the failure for /health until a later
request completes.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Generic, TypeVar

from impetus_cli.errors import EngineError
from impetus_cli.runtime.engines.base import relay
from impetus_cli.runtime.engines.common import Health, Pending
from impetus_cli.runtime.types import GenerationChunk

log = logging.getLogger("impetus.engine")

R = TypeVar("R", bound=Pending)


class Worker(ABC, Generic[R]):
    """A backend's decode thread: subclasses say how to admit a request, run a step and let
    requests go; this class owns the thread, the queue, the idle wait and failures."""

    def __init__(self, name: str, health: Health):
        self.health = health
        self._cv = threading.Condition()
        self._waiting: list[R] = []
        self._intake: list[R] = []  # taken from _waiting and not admitted yet (loop thread only)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the loop; subclasses call it once their own state is set up."""
        self._thread.start()

    # -- the consumer side ---------------------------------------------------------------------

    def stream(self, request: R) -> Iterator[GenerationChunk]:
        """The request's chunks. It joins the queue when the stream is first read; cancelling
        it, or closing the stream, drops it at the next step (see base.relay)."""
        with self._cv:
            if self._closed:
                raise EngineError("The model was unloaded.", "Send the request again.")
            self._waiting.append(request)
            self._cv.notify()
        yield from relay(request.out, request.cancel, request.abandon)

    def close(self) -> None:
        """Stop the loop; requests still held end with an error. The thread has ended (and
        ``_loop_ended`` has run) when this returns."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()

    # -- what a backend implements -------------------------------------------------------------

    @abstractmethod
    def _room(self) -> int:
        """How many waiting requests may be admitted now."""

    @abstractmethod
    def _held(self) -> list[R]:
        """The admitted requests that have not ended."""

    @abstractmethod
    def _admit(self, request: R) -> None:
        """Start a request; one that cannot start gets its final chunk or error at once."""

    @abstractmethod
    def _step(self) -> None:
        """One step of every held request."""

    @abstractmethod
    def _let_go(self, requests: list[R], *, failed: bool) -> None:
        """Release what ``requests`` hold, before they end with an error. ``failed``: a step
        failed, so their cached state is unknown and must not be reused."""

    def _loop_ended(self) -> None:
        """Free what the loop thread owns, as it ends."""

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                try:
                    self._turn()
                except Exception as exc:
                    self._fail(exc)
            gone = EngineError(
                "The model was unloaded while generating.", "Send the request again."
            )
            self._end_all(gone, failed=False)
        finally:
            self._loop_ended()

    def _wait_for_work(self) -> bool:
        """Sleep until there is something to do; take what may be admitted. False once closed."""
        with self._cv:
            while not (self._closed or self._held() or (self._waiting and self._room() > 0)):
                self._cv.wait()
            if self._closed:
                return False
            n = self._room()
            self._intake, self._waiting = self._waiting[:n], self._waiting[n:]
            return True

    def _turn(self) -> None:
        while self._intake:
            self._admit(self._intake[0])
            self._intake.pop(0)  # only once admitted: a failure above ends it with the rest
        if self._held():
            self._step()

    def _fail(self, exc: Exception) -> None:
        log.error("%s failed; its requests end with an error", self._thread.name, exc_info=exc)
        message = f"The model's generation loop failed ({type(exc).__name__}: {exc})."
        self.health.failed(message)
        hint = "Send the request again; if it fails again, unload the model and report the bug."
        self._end_all(EngineError(message, hint), failed=True)

    def _end_all(self, error: EngineError, *, failed: bool) -> None:
        """End every request the loop holds, admitted or waiting, with ``error``."""
        with self._cv:
            waiting, self._waiting = self._waiting, []
        requests = list({id(r): r for r in [*self._held(), *self._intake, *waiting]}.values())
        self._intake = []
        try:
            self._let_go(requests, failed=failed)
        except Exception:
            log.exception("%s: releasing failed requests failed too", self._thread.name)
        finally:
            for request in requests:
                request.out.put(error)
