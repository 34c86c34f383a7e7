"""What both engines' schedulers share: the prefix arithmetic of prompt caches, the record of
one request between the thread that reads its stream and the thread that produces it, and the
engine's health (the last failure of its generation loop)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from impetus_cli.runtime.types import GenerationChunk, SamplingParams


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(eq=False)
class Pending:
    """One generation, from its queue to its final chunk: the prompt, the settings, the reply
    budget, and the queue the producing thread fills and ``base.relay`` reads."""

    tokens: list[int]
    sampling: SamplingParams
    cancel: threading.Event
    limit: int  # tokens the reply may have (limits.reply_budget)
    out: queue.SimpleQueue[GenerationChunk | BaseException] = field(
        default_factory=queue.SimpleQueue
    )
    abandoned: bool = False  # the consumer stopped reading
    start: float = field(default_factory=time.perf_counter)

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set() or self.abandoned

    def abandon(self) -> None:
        self.abandoned = True


@dataclass(frozen=True)
class Failure:
    """What went wrong in a generation loop, and when (seconds since the epoch)."""

    message: str
    at: float

    def __str__(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.message} (at {when})"


class Health:
    """An engine's last generation failure, kept until a later request completes: what
    ``Engine.failure`` reports (for /health). Any thread may set, clear or read it."""

    def __init__(self) -> None:
        self._last: Failure | None = None

    @property
    def failure(self) -> str | None:
        last = self._last  # one read: another thread may clear it meanwhile
        return None if last is None else str(last)

    def failed(self, message: str) -> None:
        self._last = Failure(message, time.time())

    def recovered(self) -> None:
        self._last = None
