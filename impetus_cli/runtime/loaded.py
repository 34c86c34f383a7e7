"""A model in memory, as the manager keeps it, and the error when another does not fit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from impetus_cli.errors import InsufficientMemory
from impetus_cli.runtime.engines.base import Engine
from impetus_cli.runtime.types import LoadPlan, LocalModel, ModelInfo


@dataclass
class Loaded:
    """A model in memory and its bookkeeping (guarded by the manager's lock)."""

    model: LocalModel
    info: ModelInfo
    plan: LoadPlan
    engine: Engine
    slots: threading.Semaphore
    keep_alive: float
    pinned: bool = False
    in_flight: int = 0
    waiting: int = 0
    closing: bool = False  # unloaded while busy: refuses new work, closes when drained
    last_used: float = field(default_factory=time.time)
    loaded_at: float = field(default_factory=time.time)

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0

    def wait_slot(self, timeout: float, cancel: threading.Event | None) -> bool:
        """Wait up to ``timeout`` seconds for a free slot; give up early once ``cancel`` is set
        (the client hung up while queued)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.slots.acquire(timeout=min(left, 0.25)):
                return True
            if cancel is not None and cancel.is_set():
                return False
        return False

    def expired(self, now: float) -> bool:
        """Idle for longer than its keep-alive (never when pinned or kept forever)."""
        return (
            self.idle
            and not self.pinned
            and self.keep_alive >= 0
            and now - self.last_used > self.keep_alive
        )


def no_room(
    name: str, need: int, budget: int, used: int, held: Sequence[Loaded], loading: Sequence[str]
) -> InsufficientMemory:
    """The 503 for a model that does not fit even after evicting every idle one."""
    names = ", ".join(f"{e.model.name} ({e.plan.total_bytes / 1e9:.1f} GB)" for e in held)
    others = ", ".join(n for n in loading if n != name)
    return InsufficientMemory(
        f"{name} needs {need / 1e9:.1f} GB but only {(budget - used) / 1e9:.1f} GB of the "
        f"{budget / 1e9:.1f} GB budget is free; loaded and busy: {names or 'nothing'}"
        + (f"; loading: {others}." if others else "."),
        "Wait for running requests to finish, unload a model, or raise --memory-budget.",
    )


class Ticker:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread, from ``start`` (the first
    call starts it; later ones do nothing) until ``stop``."""

    def __init__(self, tick: Callable[[], None], *, name: str, interval: float = 1.0):
        self._tick, self._name, self._interval = tick, name, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def stop(self) -> None:
        self._stop.set()
