"""Prefix snapshots in memory, for GGUF models with a sliding window (Gemma 2 and 3).

On other models, a prefix two conversations share (an agent's system prompt) is copied from one
sequence to another by sharing KV cells (llama_batch.py). A sliding-window layer keeps only the
last window of positions, so once a conversation has moved past the shared prefix its cache no
longer holds the state at the end of it, and sharing cells is unsafe there (``can_copy``).

So when a prompt shares a long prefix with another sequence but cannot reuse it, the scheduler
stops evaluating that prompt at the end of the shared prefix and saves the sequence's state there
(``llama_state_seq_get_data``: its KV cells, copied out). A later prompt that starts with the same
prefix loads the snapshot into its own sequence (``llama_state_seq_set_data``) instead of
evaluating it: the second agent session pays for the system prompt again, the third and later do
not. The snapshots are bounded by ``plan.snapshot_bytes`` (the planner counts them), least
recently used first out.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Any

# A shared prefix shorter than this is cheaper to evaluate than to keep.
MIN_SNAPSHOT = 256


@dataclass(eq=False)
class Snapshot:
    tokens: list[int]
    data: Any  # a ctypes c_uint8 array: llama.cpp's state of the sequence holding ``tokens``
    pos_min: int  # the oldest position its sliding-window layers still hold
    last_used: float


class Snapshots:
    def __init__(self, lib: Any, ctx: Any, mem: Any, n_swa: int, budget: int):
        self.lib, self.ctx, self.mem = lib, ctx, mem
        self.n_swa, self.budget = n_swa, budget
        self.items: list[Snapshot] = []

    @property
    def bytes(self) -> int:
        return sum(len(s.data) for s in self.items)

    def best(self, tokens: list[int], limit: int) -> tuple[Snapshot | None, int]:
        """The snapshot sharing the longest usable prefix with ``tokens`` (at most ``limit``):
        all of its tokens, or fewer when its window still reaches back far enough to trim."""
        from impetus_cli.runtime.engines.llama_batch import common_prefix

        found, best = None, 0
        for snap in self.items:
            n = min(common_prefix(snap.tokens, tokens), limit)
            usable = n == len(snap.tokens) or snap.pos_min <= max(0, n - self.n_swa)
            if n > best and usable:
                found, best = snap, n
        return found, best

    def wanted(self, tokens: list[int], shared: int, reused: int) -> int:
        """Where to snapshot a prompt: at the end of the ``shared`` prefix it has in common
        with another sequence, when that is MIN_SNAPSHOT tokens past what it ``reused`` and no
        snapshot holds it yet; 0 for nowhere."""
        if shared < reused + MIN_SNAPSHOT:
            return 0
        if any(s.tokens == tokens[:shared] for s in self.items):
            return 0
        return shared

    def take(self, seq_id: int, tokens: list[int]) -> None:
        """Save sequence ``seq_id``, which holds ``tokens``; evict the least recently used
        snapshots past the budget. Skipped when llama.cpp cannot or the budget is too small."""
        size = int(self.lib.llama_state_seq_get_size(self.ctx, seq_id))
        if size <= 0 or size > self.budget:
            return
        data = (ctypes.c_uint8 * size)()
        if int(self.lib.llama_state_seq_get_data(self.ctx, data, size, seq_id)) != size:
            return
        pos_min = max(0, int(self.lib.llama_memory_seq_pos_min(self.mem, seq_id)))
        self.items.append(Snapshot(list(tokens), data, pos_min, time.monotonic()))
        while self.bytes > self.budget:
            self.items.remove(min(self.items, key=lambda s: s.last_used))

    def load(self, seq_id: int, snap: Snapshot) -> bool:
        """Put ``snap`` into sequence ``seq_id`` (whatever it held is dropped). A snapshot
        llama.cpp refuses (no free cells) is kept for later; the sequence is left empty."""
        self.lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        if not self.lib.llama_state_seq_set_data(self.ctx, snap.data, len(snap.data), seq_id):
            self.lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
            return False
        snap.last_used = time.monotonic()
        return True
