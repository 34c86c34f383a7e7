"""The prompt cache behind a llama.cpp context's KV cache: conversations that leave it are kept
in host RAM and on disk (prompt_tiers.py), and restored when a prompt comes back to them.

A slot's sequence leaves the KV cache when another prompt takes its slot (llama_slots.py): its
state is copied out first (``llama_state_seq_get_data``: its KV cells) into the RAM tier. A
prompt that shares a longer prefix with a saved entry than with anything in the KV cache gets
the entry put into its slot (``llama_state_seq_set_data``) and trimmed to the shared prefix;
only the rest is evaluated. Entries leaving RAM go to disk when reading them back is faster than
evaluating them (``Crossover``); at unload, the slots and the RAM tier are written there too, so
a restarted server finds them.

Trimming a restored entry: full-attention caches trim anywhere. Sliding-window layers (Gemma
2/3) hold only the last window, so an entry serves a shorter prefix only while its window
reaches back far enough, or at its window checkpoint (llama_snapshots.py), saved with it.
Recurrent layers cannot roll back: such an entry serves prompts that extend all of it, or its
checkpoint.

Disk entries are keyed by the model file (path, size, modification time), the chat template,
the KV cache layout and the llama.cpp version, so nothing stale is ever restored.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus_cli.runtime.engines.llama_native import LlamaContext
from impetus_cli.runtime.engines.prompt_tiers import Crossover, DiskTier, Entry, Tier, TierStats
from impetus_cli.runtime.types import ModelInfo

log = logging.getLogger("impetus.cache")

MIN_SAVE = 256  # shorter prefixes are cheap to evaluate again
PARTIAL_ONLY = 1  # LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY: sliding-window / recurrent layers only


@dataclass(frozen=True)
class Identity:
    """What a saved state is valid for: the model file, its template and the cache layout."""

    path: Path
    size: int
    mtime_ns: int
    template: str
    kv_type: str
    flash_attn: bool
    n_swa: int

    @classmethod
    def of(
        cls, info: ModelInfo, template: str, kv_type: str, flash_attn: bool, n_swa: int
    ) -> Identity:
        stat = info.path.stat()
        path = info.path.resolve()
        return cls(path, stat.st_size, stat.st_mtime_ns, template, kv_type, flash_attn, n_swa)

    def key(self) -> str:
        """The directory name of this identity's disk entries."""
        try:
            from importlib.metadata import version

            build = version("llama_cpp_python")
        except Exception:  # any failure only means "unknown build"
            build = "?"
        template = hashlib.sha256(self.template.encode()).hexdigest()
        facts = (
            f"{self.path}|{self.size}|{self.mtime_ns}|{template}|{self.kv_type}|"
            f"{int(self.flash_attn)}|{self.n_swa}|{build}"
        )
        digest = hashlib.sha256(facts.encode()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.path.stem)[:60]
        return f"{stem}-{digest}"


class PromptCache:
    """The RAM and disk tiers of one context. Used by the scheduler's thread (and by the engine
    once that thread has stopped); the counters may be read from any thread."""

    def __init__(
        self,
        llama: LlamaContext,
        ram_bytes: int,
        disk: DiskTier | None = None,
        *,
        trimmable: bool = True,
    ):
        self.llama = llama
        self.trimmable = trimmable  # False: recurrent layers, which cannot roll back
        self.crossover = Crossover()
        self.disk = disk
        self.ram = Tier(ram_bytes, self._spill)

    @property
    def tiers(self) -> tuple[TierStats, ...]:
        disk = (self.disk.stats(),) if self.disk is not None else ()
        return (self.ram.stats(), *disk)

    # -- saving ---------------------------------------------------------------------------------

    def keep(self, seq_id: int, tokens: list[int], checkpoint: tuple[int, Any] | None) -> None:
        """Copy sequence ``seq_id``, which holds ``tokens``, into the RAM tier before it leaves
        the KV cache (``checkpoint``: its window checkpoint, tokens and data, if any)."""
        if len(tokens) < MIN_SAVE or self.ram.holds(tokens, self._covers):
            return
        lib, ctx = self.llama.lib, self.llama.ctx
        size = int(lib.llama_state_seq_get_size_ext(ctx, seq_id, 0))
        if size <= 0 or size > max(self.ram.budget, self.disk.budget if self.disk else 0):
            return
        data = (ctypes.c_uint8 * size)()
        if int(lib.llama_state_seq_get_data_ext(ctx, data, size, seq_id, 0)) != size:
            return
        pos_min = max(0, int(lib.llama_memory_seq_pos_min(self.llama.mem, seq_id)))
        self.keep_state(list(tokens), data, pos_min, checkpoint)

    def keep_state(
        self, tokens: list[int], data: Any, pos_min: int, checkpoint: tuple[int, Any] | None
    ) -> None:
        """Keep a state already copied out (a parked sequence's) in the RAM tier."""
        if len(tokens) < MIN_SAVE or self.ram.holds(tokens, self._covers):
            return
        meta = {"pos_min": pos_min, "checkpoint": 0}
        extra = None
        if checkpoint is not None and 0 < checkpoint[0] <= len(tokens):
            meta["checkpoint"], extra = checkpoint[0], checkpoint[1]
        entry = Entry(tokens, data, meta, extra)
        if entry.nbytes <= self.ram.budget:
            self.ram.add(entry)
        else:
            self._spill(entry)

    def prefilled(self, tokens: int, seconds: float) -> None:
        """A prompt's evaluation speed, for the disk-or-evaluate choice."""
        self.crossover.prefilled(tokens, seconds)

    def save(self) -> None:
        """At unload (the slots kept first): the RAM tier to disk, and wait for the writes."""
        if self.disk is None:
            return
        with self.ram.lock:
            entries = list(self.ram.entries)
        for entry in sorted(entries, key=lambda e: -e.used):
            self.disk.put(entry)
        self.disk.close()

    def _spill(self, entry: Entry) -> None:
        """An entry leaving RAM goes to disk when reading it back beats evaluating it."""
        if self.disk is not None and self.crossover.disk_wins(len(entry.tokens), entry.nbytes):
            self.disk.put(entry)

    @property
    def _covers(self) -> bool:
        """Whether an entry also serves any prefix of its tokens (full attention only)."""
        return self.trimmable and self.llama.n_swa <= 0

    # -- restoring ------------------------------------------------------------------------------

    def best(self, tokens: list[int], limit: int) -> tuple[Entry | None, int]:
        """The entry serving the longest prefix of ``tokens`` (at most ``limit``), RAM first;
        a disk entry only when reading it beats evaluating what it saves."""
        entry, n = self.ram.best(tokens, limit, self.usable)
        if self.disk is not None:
            on_disk, m = self.disk.best(tokens, limit, self.usable)
            if on_disk is not None and m > n and self.crossover.disk_wins(m, on_disk.nbytes):
                return on_disk, m
        return entry, n

    def usable(self, entry: Entry, n: int) -> int:
        """How much of a common prefix of ``n`` tokens the entry can serve."""
        if n <= 0 or n == len(entry.tokens):
            return max(0, n)
        if self._trims_to(entry, n):
            return n
        checkpoint = entry.meta.get("checkpoint", 0)
        return checkpoint if 0 < checkpoint <= n else 0

    def _trims_to(self, entry: Entry, n: int) -> bool:
        n_swa = self.llama.n_swa
        window = n_swa <= 0 or entry.meta.get("pos_min", 0) <= max(0, n - n_swa)
        return self.trimmable and window

    def restore(self, seq_id: int, entry: Entry, n: int) -> int:
        """Put ``entry`` into the (emptied) sequence ``seq_id`` and trim it to ``n`` tokens
        (a value ``usable`` gave); the tokens it holds then, 0 when it could not."""
        tier: Tier = self.ram
        if entry.data is None:
            assert self.disk is not None
            tier, start = self.disk, time.perf_counter()
            loaded = self.disk.read(entry)
            if loaded is None:
                return 0
            self.crossover.read(loaded.nbytes, time.perf_counter() - start)
        else:
            loaded = entry
        if not self._put(seq_id, loaded, n):
            self.llama.lib.llama_memory_seq_rm(self.llama.mem, seq_id, -1, -1)
            return 0
        tier.hit(entry, n)
        return n

    def _put(self, seq_id: int, entry: Entry, n: int) -> bool:
        lib, ctx, mem = self.llama.lib, self.llama.ctx, self.llama.mem
        lib.llama_memory_seq_rm(mem, seq_id, -1, -1)
        data = _c_bytes(entry.data)
        if not lib.llama_state_seq_set_data(ctx, data, len(data), seq_id):
            return False  # no free cells for it now: the entry stays for later
        if n == len(entry.tokens):
            return True
        if not self._trims_to(entry, n):
            extra = _c_bytes(entry.extra)
            if n != entry.meta.get("checkpoint") or not len(extra):
                return False
            if not lib.llama_state_seq_set_data_ext(ctx, extra, len(extra), seq_id, PARTIAL_ONLY):
                return False
        return bool(lib.llama_memory_seq_rm(mem, seq_id, n, -1))


def _c_bytes(buf: Any) -> Any:
    """A ctypes byte array over ``buf`` (a ctypes array already, or a writable buffer)."""
    if buf is None:
        return (ctypes.c_uint8 * 0)()
    if isinstance(buf, ctypes.Array):
        return buf
    view = memoryview(buf)
    return (ctypes.c_uint8 * view.nbytes).from_buffer(view)
