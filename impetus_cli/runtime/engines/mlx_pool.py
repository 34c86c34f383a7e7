"""The MLX engine's prompt caches: one per recent conversation (up to ``plan.n_parallel``), and
the choice of which one a new prompt extends.

A prompt that shares a prefix with a cached conversation trims that cache to the common prefix
(``trim_prompt_cache``), or starts from a copy of that prefix when trimming would evict more,
and only the rest is evaluated. Both the serial path (mlx.py) and the batcher (mlx_batch.py)
take a cache here before generating and give it back when they stop.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any

from impetus_cli.runtime.engines.common import common_prefix


@dataclass(eq=False)
class CachedPrompt:
    """One conversation's prompt cache and the tokens it holds, in order."""

    tokens: list[int]
    cache: Any  # mlx-lm's list of per-layer caches
    last_used: float = 0.0
    busy: bool = False  # a generation is extending it


class PromptPool:
    """Recent conversations' prompt caches; any thread (a lock guards the list)."""

    def __init__(self, model: Any, size: int):
        self._model = model
        self.size = max(1, size)
        self._lock = threading.Lock()
        self.entries: list[CachedPrompt] = []
        self.last_cached = 0  # of the last prompt placed: the tests and metrics read them
        self.last_evaluated = 0

    @property
    def nbytes(self) -> int:
        """What the caches hold now."""
        with self._lock:
            layers = [c for entry in self.entries for c in entry.cache]
        return sum(int(getattr(c, "nbytes", 0)) for c in layers)

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

    def give_back(self, entry: CachedPrompt, cache: Any, sequence: list[int]) -> None:
        """The generation stopped: ``cache`` holds ``sequence`` (prompt and the sampled tokens),
        or a step more, which is trimmed."""
        from mlx_lm.models.cache import trim_prompt_cache

        offsets = [int(getattr(c, "offset", len(sequence))) for c in cache]
        held = min(offsets, default=0)
        if held > len(sequence):  # a step computed ahead of what was read
            trim_prompt_cache(cache, held - len(sequence))
            held = len(sequence)
        with self._lock:
            entry.cache, entry.tokens, entry.busy = cache, sequence[:held], False

    def discard(self, entry: CachedPrompt) -> None:
        """A generation on it failed: what the cache holds is unknown, so it goes."""
        with self._lock:
            if entry in self.entries:
                self.entries.remove(entry)

    def clear(self) -> None:
        """Forget every cache not in use (the next prompts are evaluated cold)."""
        with self._lock:
            self.entries = [e for e in self.entries if e.busy]

    def _choose(self, tokens: list[int]) -> tuple[CachedPrompt, int]:
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        limit = len(tokens) - 1
        free = [e for e in self.entries if not e.busy]
        shared = {id(e): _usable_prefix(e, tokens, limit) for e in free}
        best = max(free, key=lambda e: (shared[id(e)], e.last_used), default=None)
        keep = shared[id(best)] if best is not None else 0
        others = [e for e in free if e is not best]
        victim = min(others, key=lambda e: (len(e.tokens), e.last_used), default=None)
        room = len(self.entries) < self.size
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
