"""Prefix snapshots in memory, for GGUF models with a sliding window (Gemma 2 and 3).

On other models, a prefix two conversations share (an agent's system prompt) is copied from one
sequence to another by sharing KV cells (llama_slots.py). A sliding-window layer keeps only the
last window of positions, so once a conversation has moved past the shared prefix its cache no
longer holds the state at the end of it, and sharing cells is unsafe there (``can_copy``).

So the scheduler stops evaluating a prompt where a prefix worth sharing ends and saves the
sequence's state there (``llama_state_seq_get_data``: its KV cells, copied out): at the end of its
instructions (the system prompt and tools, which prepare.instructions_end finds in the rendered
prompt), and where it stops sharing a long prefix with another sequence (instructions sent as
part of the first user message). A later prompt that starts with the same prefix loads the
snapshot into its own sequence (``llama_state_seq_set_data``) instead of evaluating it: an
agent's second session does not pay for its system prompt again.

A follow-up turn meets the same window from the other side: it extends its own conversation,
but if the reply it sends back does not tokenize exactly as it was generated, the shared prefix
ends a few tokens before the end of the cache, and the window at that point may be gone (other
sequences reuse the cells that fell out of a window). So each sequence also keeps a window
checkpoint, taken a few tokens before the end of every long prompt it evaluates: only the
sliding-window layers' cells (``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY``, as llama-server's context
checkpoints), put back over the full-attention layers' cells, which are still there.

A third use of the same room: parking. In the unified KV cache, every micro-batch of a prompt
attends over all occupied cells, the other conversations' too (masked out, but still visited;
BENCHMARKS.md measures what that costs a prompt, with benchmarks/idle_cells.py).
So when a request is about to evaluate a long prompt, the idle sequences are copied out and
cleared, as llama-server does with its idle slots; their slots keep their tokens, and the state
is put back when a request continues one of them. A sequence is parked only into free room.

Snapshots, checkpoints and parked sequences are bounded together by ``plan.snapshot_bytes`` (the
planner counts them). Past it, the least recently used snapshot goes first, then parked
sequences return to the KV cache (oldest first: nothing cached is lost), then checkpoints. A
snapshot just taken is dropped only if putting the parked sequences back did not make room for
it, and before any checkpoint (parking fills the room a prompt's snapshot is about to need, and
is worth less than it).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from impetus_cli.runtime.engines.common import common_prefix
from impetus_cli.runtime.engines.llama_native import LlamaContext

# A shared prefix shorter than this is cheaper to evaluate than to keep.
MIN_SNAPSHOT = 256
PARTIAL_ONLY = 1  # LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY: the sliding-window layers only
# Window checkpoints are taken this many tokens before the end of a prompt, so that a follow-up
# whose template renders the last turn's opening differently still finds one (llama-server: 4).
CHECKPOINT_BACK = 4


@dataclass(eq=False)
class Snapshot:
    tokens: list[int]
    data: Any  # a ctypes c_uint8 array: llama.cpp's state of the sequence holding ``tokens``
    pos_min: int  # the oldest position its sliding-window layers still hold
    last_used: float


@dataclass(eq=False)
class Checkpoint:
    n_tokens: int  # the sequence held this many tokens when it was taken
    data: Any  # a ctypes c_uint8 array: the sliding-window layers' cells only


@dataclass(eq=False)
class Parked:
    data: Any  # a ctypes c_uint8 array: the whole state of the sequence
    pos_min: int  # what llama_memory_seq_pos_min said before it was cleared


class Snapshots:
    def __init__(
        self, llama: LlamaContext, budget: int, lost: Callable[[int], None] = lambda _: None
    ):
        self.lib, self.ctx, self.mem = llama.lib, llama.ctx, llama.mem
        self.n_swa, self.budget = llama.n_swa, budget
        self.items: list[Snapshot] = []
        self.checkpoints: dict[int, Checkpoint] = {}  # seq_id -> its latest
        self.parked: dict[int, Parked] = {}  # seq_id -> its state, oldest first
        self.lost = lost  # called with a sequence whose parked state could not be put back

    @property
    def bytes(self) -> int:
        snapshots = sum(len(s.data) for s in self.items)
        parked = sum(len(p.data) for p in self.parked.values())
        return snapshots + parked + sum(len(c.data) for c in self.checkpoints.values())

    def pos_min(self, seq_id: int) -> int:
        """The oldest position the sequence's sliding-window layers hold, parked or not."""
        parked = self.parked.get(seq_id)
        if parked is not None:
            return parked.pos_min
        return int(self.lib.llama_memory_seq_pos_min(self.mem, seq_id))

    def park(self, seq_id: int) -> bool:
        """Copy an idle sequence out of the KV cache and clear its cells, if its state fits in
        the room left (nothing is evicted for it)."""
        if seq_id in self.parked:
            return True
        data = self._get(seq_id, 0, room=self.budget - self.bytes)
        if data is None:
            return False
        self.parked[seq_id] = Parked(data, self.pos_min(seq_id))
        self.lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        return True

    def unpark(self, seq_id: int) -> None:
        """Put a parked sequence back into the KV cache (nothing if it is not parked). On
        failure the sequence is left empty and ``lost`` is told."""
        parked = self.parked.pop(seq_id, None)
        if parked is None:
            return
        if not self.lib.llama_state_seq_set_data(self.ctx, parked.data, len(parked.data), seq_id):
            self.lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
            self.lost(seq_id)

    def drop_parked(self, seq_id: int) -> None:
        """The sequence's slot starts over: its parked state is not needed."""
        self.parked.pop(seq_id, None)

    def best(self, tokens: list[int], limit: int) -> tuple[Snapshot | None, int]:
        """The snapshot sharing the longest usable prefix with ``tokens`` (at most ``limit``):
        all of its tokens, or fewer when its window still reaches back far enough to trim."""
        found, best = None, 0
        for snap in self.items:
            n = min(common_prefix(snap.tokens, tokens), limit)
            usable = n == len(snap.tokens) or snap.pos_min <= max(0, n - self.n_swa)
            if n > best and usable:
                found, best = snap, n
        return found, best

    def wanted(self, tokens: list[int], shared: int, reused: int) -> int:
        """Where to snapshot a prompt: at the end of a ``shared`` prefix (one it has in common
        with another sequence, or its instructions), when that is MIN_SNAPSHOT tokens past what
        it ``reused`` and no snapshot holds it yet; 0 for nowhere."""
        if shared < reused + MIN_SNAPSHOT:
            return 0
        if any(s.tokens == tokens[:shared] for s in self.items):
            return 0
        return shared

    def take(self, seq_id: int, tokens: list[int]) -> None:
        """Save sequence ``seq_id``, which holds ``tokens``; evict the least recently used
        snapshots past the budget. Skipped when llama.cpp cannot or the budget is too small."""
        data = self._get(seq_id, 0)
        if data is None:
            return
        pos_min = max(0, int(self.lib.llama_memory_seq_pos_min(self.mem, seq_id)))
        snap = Snapshot(list(tokens), data, pos_min, time.monotonic())
        self.items.append(snap)
        self._fit(snap)

    def checkpoint_at(self, n_prompt: int) -> int:
        """Where to take a window checkpoint of a prompt of ``n_prompt`` tokens (0: none; a
        prompt within one window never loses it)."""
        return n_prompt - CHECKPOINT_BACK if n_prompt > self.n_swa + CHECKPOINT_BACK else 0

    def take_checkpoint(self, seq_id: int, n_tokens: int) -> None:
        """Replace sequence ``seq_id``'s window checkpoint with its state now."""
        self.checkpoints.pop(seq_id, None)
        data = self._get(seq_id, PARTIAL_ONLY)
        if data is not None:
            self.checkpoints[seq_id] = Checkpoint(n_tokens, data)
            self._fit()

    def restore_checkpoint(self, seq_id: int, keep: int) -> int:
        """Put back ``seq_id``'s checkpoint if it lies within the first ``keep`` tokens; the
        tokens it covers (the caller trims the sequence to them), or 0 if there is none. A
        failed load leaves the sequence empty (its window layers were cleared)."""
        cp = self.checkpoints.get(seq_id)
        if cp is None or cp.n_tokens > keep:
            return 0
        set_data = self.lib.llama_state_seq_set_data_ext
        if set_data(self.ctx, cp.data, len(cp.data), seq_id, PARTIAL_ONLY):
            return cp.n_tokens
        del self.checkpoints[seq_id]
        self.lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        return 0

    def forget(self, seq_id: int, n_tokens: int) -> None:
        """The sequence was cut to ``n_tokens``: a checkpoint past that no longer matches it."""
        cp = self.checkpoints.get(seq_id)
        if cp is not None and cp.n_tokens > n_tokens:
            del self.checkpoints[seq_id]

    def _get(self, seq_id: int, flags: int, room: int | None = None) -> Any:
        """The sequence's state, if llama.cpp gives it and it fits in ``room`` (default: the
        whole budget)."""
        size = int(self.lib.llama_state_seq_get_size_ext(self.ctx, seq_id, flags))
        if size <= 0 or size > (self.budget if room is None else room):
            return None
        data = (ctypes.c_uint8 * size)()
        got = self.lib.llama_state_seq_get_data_ext(self.ctx, data, size, seq_id, flags)
        return data if int(got) == size else None

    def _fit(self, new: Snapshot | None = None) -> None:
        """Least recently used snapshots out (but a ``new`` one), then parked sequences back
        into the KV cache, then the new snapshot, then checkpoints, until within the budget."""
        while self.bytes > self.budget and any(s is not new for s in self.items):
            self.items.remove(
                min((s for s in self.items if s is not new), key=lambda s: s.last_used)
            )
        while self.bytes > self.budget and self.parked:
            self.unpark(next(iter(self.parked)))
        if self.bytes > self.budget and new is not None:
            self.items.remove(new)
        while self.bytes > self.budget and self.checkpoints:
            del self.checkpoints[next(iter(self.checkpoints))]

    def load(self, seq_id: int, snap: Snapshot) -> bool:
        """Put ``snap`` into sequence ``seq_id`` (whatever it held is dropped). A snapshot
        llama.cpp refuses (no free cells) is kept for later; the sequence is left empty."""
        self.lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        if not self.lib.llama_state_seq_set_data(self.ctx, snap.data, len(snap.data), seq_id):
            self.lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
            return False
        snap.last_used = time.monotonic()
        return True
