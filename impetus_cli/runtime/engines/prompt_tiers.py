"""The prompt cache's tiers behind the KV cache: host RAM and disk (DESIGN.md "Prompt caches").

A conversation that leaves the KV cache (another request took its slot) is kept as an ``Entry``:
the tokens it holds and the engine's opaque saved state of them (bytes). The RAM tier keeps
entries within a byte budget; past it, the entries worth least go first, to the disk tier when
one is set and reading them back beats evaluating their tokens again (``Crossover``), else they
are dropped. The disk tier keeps them under its own budget, one file each, written atomically
by a background thread (a decode step never waits for a disk), checksummed, and found again
after a restart.

Engine-agnostic: what the bytes are, and whether an entry can serve a shorter prefix than all
of its tokens, is the engine's business (``usable``). Thread-safe: the engine's thread finds
and adds entries while the disk writer runs, and the status API reads the counters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from impetus_cli.runtime.engines.common import common_prefix

log = logging.getLogger("impetus.cache")

MAGIC = b"IMPKV1\n"
SUFFIX = ".kv"
MAX_PENDING = 1 << 30  # bytes waiting for the disk writer; past it, spilled entries are dropped
# How much of an entry's prefix a prompt serves, given the common prefix ``n`` (0: none).
Usable = Callable[["Entry", int], int]


@dataclass(eq=False)
class Entry:
    """A saved prompt: its tokens, the engine's state of them (``data``, and an optional
    ``extra`` such as a window checkpoint, which ``meta`` describes), and where it lives."""

    tokens: list[int]
    data: bytes | bytearray | memoryview | None  # None: on disk only, read when used
    meta: dict[str, int] = field(default_factory=dict)
    extra: bytes | bytearray | memoryview | None = None
    nbytes: int = 0
    used: int = 0  # the tier's clock when last saved or restored
    path: Path | None = None  # the disk tier's file

    def __post_init__(self) -> None:
        if not self.nbytes and self.data is not None:
            self.nbytes = len(self.data) + (len(self.extra) if self.extra is not None else 0)

    def worth(self, clock: int) -> float:
        """Tokens saved per byte, discounted by how long ago it was used: the lowest goes."""
        return len(self.tokens) / max(1, self.nbytes) / (1 + clock - self.used)


@dataclass(frozen=True)
class TierStats:
    """One tier as /metrics and the status API show it: what it holds, its budget, and how
    often a prompt was served from it (``hits``) with how many tokens not evaluated."""

    tier: str  # "ram" or "disk"
    entries: int
    bytes: int
    budget: int
    hits: int
    tokens: int


class Crossover:
    """Whether reading an entry back from disk beats evaluating its tokens again: the engine's
    measured prompt speed (tokens/s) against the disk's measured read speed (bytes/s). Until
    both are measured, the disk is assumed to win (an SSD reads KV state at GB/s)."""

    def __init__(self) -> None:
        self.prefill_tps = 0.0
        self.read_bps = 0.0

    @staticmethod
    def _mix(old: float, new: float) -> float:
        return new if old <= 0 else 0.7 * old + 0.3 * new

    def prefilled(self, tokens: int, seconds: float) -> None:
        if tokens >= 64 and seconds > 0:
            self.prefill_tps = self._mix(self.prefill_tps, tokens / seconds)

    def read(self, nbytes: int, seconds: float) -> None:
        if nbytes >= 1 << 20 and seconds > 0:
            self.read_bps = self._mix(self.read_bps, nbytes / seconds)

    def disk_wins(self, tokens: int, nbytes: int) -> bool:
        if self.prefill_tps <= 0 or self.read_bps <= 0:
            return True
        return nbytes / self.read_bps < tokens / self.prefill_tps


class Tier:
    """Entries within a byte budget, least worth out first; the common part of both tiers."""

    name = "ram"

    def __init__(self, budget: int, evicted: Callable[[Entry], None] = lambda _: None):
        self.budget = max(0, budget)
        self.evicted = evicted
        self.entries: list[Entry] = []
        self.clock = 0
        self.hits = 0
        self.hit_tokens = 0
        self.lock = threading.RLock()

    @property
    def nbytes(self) -> int:
        with self.lock:
            return sum(e.nbytes for e in self.entries)

    def stats(self) -> TierStats:
        with self.lock:
            return TierStats(
                self.name, len(self.entries), self.nbytes, self.budget, self.hits, self.hit_tokens
            )

    def tick(self) -> int:
        with self.lock:
            self.clock += 1
            return self.clock

    def holds(self, tokens: list[int], covers: bool) -> bool:
        """Whether an entry holds ``tokens`` (or, when ``covers``, a longer prompt they start)."""
        with self.lock:
            return any(
                e.tokens == tokens or (covers and e.tokens[: len(tokens)] == tokens)
                for e in self.entries
            )

    def best(self, tokens: list[int], limit: int, usable: Usable) -> tuple[Entry | None, int]:
        """The entry serving the longest prefix of ``tokens`` (at most ``limit``)."""
        found, best = None, 0
        with self.lock:
            for entry in self.entries:
                n = usable(entry, min(common_prefix(entry.tokens, tokens), limit))
                if n > best:
                    found, best = entry, n
        return found, best

    def add(self, entry: Entry) -> None:
        """Keep ``entry`` (replacing entries it extends), then fit the budget."""
        with self.lock:
            entry.used = self.tick()
            replaced = [e for e in self.entries if _extends(entry.tokens, e.tokens)]
            self.entries = [e for e in self.entries if e not in replaced]
            self.entries.append(entry)
            gone = self._fit()
        for old in replaced:
            self._replaced(old)
        for old in gone:
            self.evicted(old)

    def _replaced(self, entry: Entry) -> None:
        """An entry that a newer one extends was dropped (nothing to do in RAM)."""

    def hit(self, entry: Entry, tokens: int) -> None:
        with self.lock:
            entry.used = self.tick()
            self.hits += 1
            self.hit_tokens += tokens

    def remove(self, entry: Entry) -> None:
        with self.lock:
            if entry in self.entries:
                self.entries.remove(entry)

    def _fit(self) -> list[Entry]:
        gone = []
        while self.entries and self.nbytes > self.budget:
            worst = min(self.entries, key=lambda e: e.worth(self.clock))
            self.entries.remove(worst)
            gone.append(worst)
        return gone


def _extends(new: list[int], old: list[int]) -> bool:
    """``new`` holds all of ``old`` and more: the old entry adds nothing."""
    return len(new) >= len(old) and new[: len(old)] == old


class DiskTier(Tier):
    """Entries as files in ``root`` (one directory per model identity: the caller's ``key``).

    A file is MAGIC, the header's length, a JSON header (tokens, meta, lengths, the payload's
    SHA-256) and the payload; written to a temporary name and renamed. On start the headers are
    read; files that are unreadable, truncated or half-written are deleted. A payload whose
    checksum differs is deleted when read."""

    name = "disk"

    def __init__(self, root: Path, key: str, budget: int):
        self.dir = root / key
        # The budget covers every model's directory: other models' oldest entries go until
        # they hold at most half of it, and this model gets the rest.
        others = _trim_others(root, self.dir, budget // 2)
        super().__init__(budget - others, self._delete)
        self._queue: queue.Queue[Entry | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._pending = 0  # bytes handed to the writer, not yet written
        self.entries = list(self._scan())
        self.clock = max((e.used for e in self.entries), default=0)
        with self.lock:
            gone = self._fit()
        for old in gone:
            self._delete(old)

    # -- writing (a background thread) ---------------------------------------------------------

    def put(self, entry: Entry) -> None:
        """Write ``entry`` in the background; it is found once written."""
        if entry.data is None or entry.nbytes > self.budget or self.holds(entry.tokens, False):
            return
        with self.lock:
            if self._pending + entry.nbytes > MAX_PENDING:
                return  # the disk is behind: the entry is dropped rather than held in RAM
            self._pending += entry.nbytes
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="impetus-kv-disk")
            self._writer.daemon = True
            self._writer.start()
        self._queue.put(entry)

    def flush(self) -> None:
        """Wait until every entry handed to ``put`` is on disk (or refused)."""
        if self._writer is not None:
            self._queue.join()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def _write_loop(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                if entry is None:
                    return
                self._write(entry)
            except OSError as exc:  # a full or read-only disk: the entry is not kept
                log.warning("prompt cache: could not write an entry: %s", exc)
            finally:
                if entry is not None:
                    with self.lock:
                        self._pending -= entry.nbytes
                self._queue.task_done()

    def _write(self, entry: Entry) -> None:
        assert entry.data is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        extra = entry.extra if entry.extra is not None else b""
        digest = hashlib.sha256(entry.data)
        digest.update(extra)
        header = json.dumps(
            {
                "tokens": entry.tokens,
                "meta": entry.meta,
                "data": len(entry.data),
                "extra": len(extra),
                "sha256": digest.hexdigest(),
            }
        ).encode()
        name = hashlib.sha256(repr(entry.tokens).encode()).hexdigest()[:20]
        path = self.dir / f"{name}{SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
            fh.write(entry.data)
            fh.write(extra)
        os.replace(tmp, path)
        saved = Entry(list(entry.tokens), None, dict(entry.meta), nbytes=entry.nbytes, path=path)
        self.add(saved)

    # -- reading --------------------------------------------------------------------------------

    def read(self, entry: Entry) -> Entry | None:
        """The entry with its payload, or None (and the file deleted) when it is damaged."""
        assert entry.path is not None
        try:
            with entry.path.open("rb") as fh:
                head = _read_header(fh)
                payload = bytearray(head.data + head.extra)
                got = fh.readinto(payload)
                more = fh.read(1)
        except (OSError, ValueError) as exc:
            log.warning("prompt cache: %s unreadable (%s); deleted", entry.path.name, exc)
            self.remove(entry)
            self._delete(entry)
            return None
        n_data = head.data
        if (
            got != len(payload)
            or more
            or head.tokens != entry.tokens
            or hashlib.sha256(payload).hexdigest() != head.sha256
        ):
            log.warning("prompt cache: %s is damaged; deleted", entry.path.name)
            self.remove(entry)
            self._delete(entry)
            return None
        view = memoryview(payload)
        extra = view[n_data:] if head.extra else None
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # the files' times order them by use after a restart
        return Entry(entry.tokens, view[:n_data], dict(entry.meta), extra, entry.nbytes)

    def _scan(self) -> Iterator[Entry]:
        if not self.dir.is_dir():
            return
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a write cut short by a crash
        paths = sorted(self.dir.glob(f"*{SUFFIX}"), key=_mtime)
        for used, path in enumerate(paths, 1):
            try:
                with path.open("rb") as fh:
                    head = _read_header(fh)
                payload = head.data + head.extra
                if head.data <= 0 or head.end + payload != path.stat().st_size:
                    raise ValueError("truncated")
            except (OSError, ValueError) as exc:
                log.warning("prompt cache: %s unusable (%s); deleted", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            yield Entry(head.tokens, None, head.meta, nbytes=payload, used=used, path=path)

    def _replaced(self, entry: Entry) -> None:
        self._delete(entry)

    @staticmethod
    def _delete(entry: Entry) -> None:
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)


def _trim_others(root: Path, mine: Path, keep: int) -> int:
    """Delete the oldest entries of other directories under ``root`` until they hold at most
    ``keep`` bytes; what they hold then."""
    files = [p for p in root.glob(f"*/*{SUFFIX}") if p.parent != mine] if root.is_dir() else []
    sized = sorted(((_mtime(p), _size(p), p) for p in files), key=lambda t: t[0])
    total = sum(size for _, size, _ in sized)
    for _, size, path in sized:
        if total <= keep:
            break
        path.unlink(missing_ok=True)
        total -= size
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@dataclass(frozen=True)
class Header:
    """What an entry file says about itself; ``end`` is where its payload starts."""

    tokens: list[int]
    meta: dict[str, int]
    data: int
    extra: int
    sha256: str
    end: int


def _read_header(fh: BinaryIO) -> Header:
    """The header of an entry file open at its start; ValueError when it is not one."""
    start = fh.read(len(MAGIC) + 8)
    if len(start) != len(MAGIC) + 8 or not start.startswith(MAGIC):
        raise ValueError("not a prompt cache entry")
    (length,) = struct.unpack("<Q", start[len(MAGIC) :])
    if length > 1 << 31:
        raise ValueError("header too long")
    raw = fh.read(length)
    if len(raw) != length:
        raise ValueError("truncated header")
    head = json.loads(raw)
    try:
        return Header(
            tokens=[int(t) for t in head["tokens"]],
            meta={str(k): int(v) for k, v in dict(head["meta"]).items()},
            data=int(head["data"]),
            extra=int(head["extra"]),
            sha256=str(head["sha256"]),
            end=len(start) + length,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad header: {exc}") from exc
