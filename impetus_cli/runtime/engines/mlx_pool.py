"""The MLX engine's prompt caches: one per recent conversation, and the choice of which one a
new prompt extends.

A prompt that shares a prefix with a cached conversation trims that cache to the common prefix
(``trim_prompt_cache``), or starts from a copy of that prefix when trimming would evict more,
and only the rest is evaluated. Both the serial path (mlx.py) and the batcher (mlx_batch.py)
take a cache here before generating and give it back when they stop.

Tiers (as the GGUF engine's, llama_cache.py): the ``size`` most recently used caches are the
planned KV cache; older ones are the RAM tier, kept within ``ram_bytes`` (least worth first:
tokens saved per byte, discounted by age). A cache leaving RAM goes to the disk tier
(prompt_tiers.DiskTier), serialized with mlx-lm's own ``save_prompt_cache`` into memory and
written by the tier's background thread; at unload every idle cache goes there. A prompt is
matched against RAM and disk before anything is evaluated.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus_cli.runtime.engines.common import common_prefix
from impetus_cli.runtime.engines.prompt_tiers import Crossover, DiskTier, Entry, TierStats

log = logging.getLogger("impetus.cache")
MIN_SAVE = 256  # shorter prefixes are cheap to evaluate again
MIN_RESTORE = 16  # a disk entry is read only when it saves this many tokens more


@dataclass(eq=False)
class CachedPrompt:
    """One conversation's prompt cache and the tokens it holds, in order."""

    tokens: list[int]
    cache: Any  # mlx-lm's list of per-layer caches
    last_used: float = 0.0
    busy: bool = False  # a generation is extending it

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(c, "nbytes", 0)) for c in self.cache)


class PromptPool:
    """Recent conversations' prompt caches; any thread (a lock guards the list)."""

    def __init__(self, model: Any, size: int, ram_bytes: int = 0, disk: DiskTier | None = None):
        self._model = model
        self.size = max(1, size)
        self.ram_bytes = max(0, ram_bytes)
        self.disk = disk
        self.crossover = Crossover()
        self._lock = threading.Lock()
        self.entries: list[CachedPrompt] = []
        self.last_cached = 0  # of the last prompt placed: the tests and metrics read them
        self.last_evaluated = 0
        self.ram_hits = self.ram_tokens = 0

    @property
    def nbytes(self) -> int:
        """What the caches hold now."""
        with self._lock:
            return sum(entry.nbytes for entry in self.entries)

    @property
    def tiers(self) -> tuple[TierStats, ...]:
        """The RAM tier (caches past the ``size`` most recent) and the disk tier, if any."""
        with self._lock:
            held = sum(e.nbytes for e in self._in_ram())
            ram = TierStats(
                "ram", len(self._in_ram()), held, self.ram_bytes, self.ram_hits, self.ram_tokens
            )
        return (ram, self.disk.stats()) if self.disk is not None else (ram,)

    def take(self, tokens: list[int]) -> tuple[CachedPrompt, int]:
        """The cache this prompt extends, marked busy and trimmed to the prefix it keeps, and
        how many tokens that is. At least one prompt token is always left to evaluate, for the
        next token's logits.

        Like the GGUF engine's slots, the choice loses the fewest cached tokens: continuing the
        cache that shares the longest prefix loses its tokens past that prefix; starting another
        loses nothing while the pool has room (else its least valuable entry), and starts from a
        copy of the shared prefix."""
        with self._lock:
            entry, keep = self._choose(tokens)
            entry.busy, entry.last_used = True, time.monotonic()
            self.last_cached, self.last_evaluated = keep, len(tokens) - keep
            return entry, keep

    def prefilled(self, tokens: int, seconds: float) -> None:
        """A prompt's evaluation speed, for the disk-or-evaluate choice."""
        self.crossover.prefilled(tokens, seconds)

    def give_back(self, entry: CachedPrompt, cache: Any, sequence: list[int]) -> None:
        """The generation stopped: ``cache`` holds ``sequence`` (prompt and the sampled tokens),
        or a step more, which is trimmed."""
        import mlx.core as mx
        from mlx_lm.models.cache import trim_prompt_cache

        offsets = [int(getattr(c, "offset", len(sequence))) for c in cache]
        held = min(offsets, default=0)
        if held > len(sequence):  # a step computed ahead of what was read
            trim_prompt_cache(cache, held - len(sequence))
            held = len(sequence)
        # Computed now, on the thread that made it: MLX evaluates a lazy array on its own
        # thread's stream, and the disk tier serializes caches at unload from another thread.
        mx.eval([c.state for c in cache])
        with self._lock:
            entry.cache, entry.tokens, entry.busy = cache, sequence[:held], False
            self._fit()

    def discard(self, entry: CachedPrompt) -> None:
        """A generation on it failed: what the cache holds is unknown, so it goes."""
        with self._lock:
            if entry in self.entries:
                self.entries.remove(entry)

    def clear(self) -> None:
        """Forget every cache not in use (the next prompts are evaluated cold)."""
        with self._lock:
            self.entries = [e for e in self.entries if e.busy]

    def save(self) -> None:
        """At unload: every idle cache to the disk tier, and wait for the writes."""
        if self.disk is None:
            return
        with self._lock:
            idle = sorted((e for e in self.entries if not e.busy), key=lambda e: -e.last_used)
        for entry in idle:
            self._spill(entry)
        self.disk.close()

    # -- tiers ------------------------------------------------------------------------------------

    def _in_ram(self) -> list[CachedPrompt]:
        """The idle caches past the ``size`` most recently used: the RAM tier."""
        recent = sorted(self.entries, key=lambda e: -e.last_used)
        return [e for e in recent[self.size :] if not e.busy]

    def _fit(self) -> None:
        """The RAM tier within its budget: the least worth out first, to disk."""
        now = time.monotonic()

        def worth(e: CachedPrompt) -> float:
            return len(e.tokens) / max(1, e.nbytes) / (1 + now - e.last_used)

        while (extra := self._in_ram()) and sum(e.nbytes for e in extra) > self.ram_bytes:
            gone = min(extra, key=worth)
            self.entries.remove(gone)
            self._spill(gone)

    def _spill(self, entry: CachedPrompt) -> None:
        """Write a cache leaving memory to disk, when reading it back beats evaluating it."""
        if self.disk is None or len(entry.tokens) < MIN_SAVE or not entry.cache:
            return
        from mlx_lm.models.cache import can_trim_prompt_cache, save_prompt_cache

        buf = io.BytesIO()
        buf.name = "entry.safetensors"  # mlx picks the format from the name
        try:
            save_prompt_cache(buf, entry.cache)  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as exc:  # a cache type mlx-lm cannot serialize
            log.warning("prompt cache: an MLX cache could not be saved: %s", exc)
            return
        data = bytearray(buf.getbuffer())
        meta = {"trimmable": int(can_trim_prompt_cache(entry.cache))}
        saved = Entry(list(entry.tokens), data, meta)
        if self.crossover.disk_wins(len(saved.tokens), saved.nbytes):
            self.disk.put(saved)

    def _from_disk(self, tokens: list[int], limit: int, keep: int) -> CachedPrompt | None:
        """A cache read from disk serving more of ``tokens`` than ``keep`` by MIN_RESTORE,
        trimmed to what it serves; None when none does or it is damaged."""
        if self.disk is None:
            return None
        found, n = self.disk.best(tokens, limit, _disk_usable)
        if found is None or n < keep + MIN_RESTORE:
            return None
        if not self.crossover.disk_wins(n, found.nbytes):
            return None
        from mlx_lm.models.cache import load_prompt_cache, trim_prompt_cache

        start = time.perf_counter()
        loaded = self.disk.read(found)
        if loaded is None or loaded.data is None:
            return None
        buf = io.BytesIO(bytes(loaded.data))
        buf.name = "entry.safetensors"
        try:
            cache = load_prompt_cache(buf)
        except (ValueError, RuntimeError, KeyError) as exc:
            log.warning("prompt cache: an MLX entry could not be loaded (%s); deleted", exc)
            self.disk.remove(found)
            DiskTier._delete(found)
            return None
        self.crossover.read(loaded.nbytes, time.perf_counter() - start)
        if n < len(found.tokens):
            trim_prompt_cache(cache, len(found.tokens) - n)
        self.disk.hit(found, n)
        return CachedPrompt(list(tokens[:n]), cache)

    def _choose(self, tokens: list[int]) -> tuple[CachedPrompt, int]:
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        limit = len(tokens) - 1
        free = [e for e in self.entries if not e.busy]
        shared = {id(e): _usable_prefix(e, tokens, limit) for e in free}
        best = max(free, key=lambda e: (shared[id(e)], e.last_used), default=None)
        keep = shared[id(best)] if best is not None else 0
        restored = self._from_disk(tokens, limit, keep)
        if restored is not None:
            self.entries.append(restored)
            return restored, len(restored.tokens)
        if best is not None and best in self._in_ram() and keep:
            self.ram_hits, self.ram_tokens = self.ram_hits + 1, self.ram_tokens + keep
        others = [e for e in free if e is not best]
        victim = min(others, key=lambda e: (len(e.tokens), e.last_used), default=None)
        # with a RAM tier, a new cache never evicts one (_fit moves the oldest out later)
        room = len(self.entries) < self.size or self.ram_bytes > 0
        loss_new = 0 if room else (len(victim.tokens) if victim else None)
        if best is not None and keep and (loss_new is None or len(best.tokens) - keep <= loss_new):
            trim_prompt_cache(best.cache, len(best.tokens) - keep)
            best.tokens = best.tokens[:keep]
            return best, keep
        dropped = victim if victim is not None else best
        if not room and dropped is not None:
            self.entries.remove(dropped)
        if best is not None and keep:
            cache = copy.deepcopy(best.cache)
            trim_prompt_cache(cache, len(best.tokens) - keep)
            entry = CachedPrompt(tokens[:keep], cache)
        else:
            entry, keep = CachedPrompt([], make_prompt_cache(self._model)), 0
        self.entries.append(entry)
        return entry, keep


def _usable_prefix(entry: CachedPrompt, tokens: list[int], limit: int) -> int:
    """The prefix of ``tokens`` the entry can serve: a cache that cannot be trimmed (recurrent
    layers) only when the prompt extends all of it."""
    from mlx_lm.models.cache import can_trim_prompt_cache

    n = min(common_prefix(entry.tokens, tokens), limit)
    return n if n == len(entry.tokens) or can_trim_prompt_cache(entry.cache) else 0


def _disk_usable(entry: Entry, n: int) -> int:
    """How much of a common prefix of ``n`` tokens a disk entry serves: all of it when the
    cache can be trimmed, else only a prompt that extends all of the entry."""
    return n if n == len(entry.tokens) or entry.meta.get("trimmable") else 0


def disk_key(path: Path, template: str, kv_bits: int | None) -> str:
    """The disk directory of a model's entries: the model's files (names, sizes, times), its
    template, the KV cache's bits and mlx-lm's version, so nothing stale is ever restored."""
    from importlib.metadata import version

    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors"))
    facts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    facts += [str(path.resolve()), hashlib.sha256(template.encode()).hexdigest()]
    facts += [str(kv_bits), version("mlx_lm")]
    digest = hashlib.sha256("|".join(facts).encode()).hexdigest()[:16]
    return f"{path.name[:60]}-mlx-{digest}"
