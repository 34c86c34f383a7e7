"""The sequences of a llama.cpp context and their cached prefixes: which one a prompt goes to,
and how much of what the caches hold it reuses.

The context holds ``n_parallel`` sequences (``Slot``). Each slot keeps the tokens its part of
the KV cache holds, so a prompt that extends them evaluates only the new tokens. A request goes
to the free slot whose choice evicts the fewest cached tokens (``_pick``); when another slot,
even a busy one, holds a longer prefix of the prompt (the system prompt two agent sessions
share), its cells are copied (``llama_memory_seq_cp``: in the unified KV cache the copy shares
the cells, nothing is evaluated), except on models with a sliding window (see ``can_copy``),
which keep snapshots of shared prefixes instead, and park idle sequences out of the KV cache
before a long prompt (llama_snapshots.py). A conversation that loses its place in the KV cache
goes to the prompt cache (llama_cache.py: RAM, then disk), whose entries compete with all of
these by the length of the prefix they serve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.runtime.engines.common import common_prefix
from impetus_cli.runtime.engines.llama_cache import MIN_SAVE, PromptCache
from impetus_cli.runtime.engines.llama_native import LlamaContext
from impetus_cli.runtime.engines.llama_snapshots import Snapshots

# A prefix is copied from another slot only when it saves at least this many tokens.
MIN_COPY = 16


@dataclass(eq=False)
class Slot:
    """One sequence of the context: its id, the tokens its KV cache holds, whether a request
    is on it."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: float = 0.0


@dataclass(frozen=True)
class Placement:
    """How a prompt starts on its slot: the prompt tokens reused, and where its sequence is
    saved as the prompt is evaluated (0: nowhere): a snapshot at the end of a prefix it shares
    with another sequence, and a window checkpoint near its end (llama_snapshots.py)."""

    cached: int
    snapshot_at: int = 0
    window_at: int = 0


class Slots:
    """The context's slots, with the snapshots and the prompt cache that feed them. Used by the
    scheduler's thread only (and by the engine once that thread has stopped)."""

    def __init__(
        self,
        llama: LlamaContext,
        n_slots: int,
        cache: PromptCache | None = None,
        snapshot_bytes: int = 0,
    ):
        self.llama = llama
        self.all = [Slot(i) for i in range(n_slots)]
        self.cache = cache
        # Copies share cells, and llama.cpp reuses a sliding-window cell past its window only
        # when one sequence holds it: copied prefixes would fill the small window cache until
        # decoding fails ("failed to find a memory slot"). So models with a window never copy.
        self.can_copy = llama.n_swa <= 0
        self.snapshots: Snapshots | None = None
        if not self.can_copy and snapshot_bytes > 0:
            self.snapshots = Snapshots(llama, snapshot_bytes, self._lost)

    @property
    def n_free(self) -> int:
        return sum(not slot.busy for slot in self.all)

    def take(self, tokens: list[int]) -> Slot:
        """The free slot ``tokens`` goes to (see ``_pick``), marked busy."""
        slot = self._pick(tokens)
        slot.busy, slot.last_used = True, time.monotonic()
        return slot

    def release(self, slot: Slot) -> None:
        """The request on the slot ended; what it cached stays for the next one."""
        slot.busy = False

    def prompt_evaluated(self, tokens: int, seconds: float) -> None:
        """A prompt's evaluation took ``seconds`` for ``tokens``: the prompt cache weighs
        reading the disk against it."""
        if self.cache is not None:
            self.cache.prefilled(tokens, seconds)

    def place(
        self, slot: Slot, tokens: list[int], n_batch: int, instructions: int = 0
    ) -> Placement:
        """Reuse the longest prefix of ``tokens`` the slot can get, plan the prompt's snapshot
        and window checkpoint, and park idle sequences when the prompt is long. The snapshot
        goes at the end of the longest prefix another sequence shares with the prompt, or else
        at the end of its ``instructions`` (the system prompt the agent's next session will
        start with), when either is long enough and no snapshot holds it yet."""
        snaps = self.snapshots
        # the longest prefix any sequence shares with the prompt, before this one is trimmed
        shared = max(common_prefix(s.tokens, tokens) for s in self.all) if snaps else 0
        if snaps is not None and slot.seq_id in snaps.parked:
            self._unpark(slot, tokens)
        cached = self._reuse_prefix(slot, tokens)
        if snaps is None:
            return Placement(cached)
        limit = len(tokens) - 1
        snapshot_at = snaps.wanted(tokens, min(shared, limit), cached) or snaps.wanted(
            tokens, min(instructions, limit), cached
        )
        at = snaps.checkpoint_at(len(tokens))
        if len(tokens) - cached >= n_batch:
            self._park_idle()
        return Placement(cached, snapshot_at, at if at > cached else 0)

    def clear(self, slot: Slot) -> None:
        """Forget what the slot holds: after a failed decode its cells are not to be trusted."""
        self.llama.lib.llama_memory_seq_rm(self.llama.mem, slot.seq_id, -1, -1)
        slot.tokens.clear()
        if self.snapshots is not None:
            self.snapshots.forget(slot.seq_id, 0)
            self.snapshots.drop_parked(slot.seq_id)

    def save(self) -> None:
        """Write the slots and the RAM tier to the prompt cache's disk tier (parked sequences
        are put back first), and wait for the writes; only once the scheduler has stopped."""
        if self.cache is not None and self.cache.disk is not None:
            self.unpark_all()
            for slot in self.all:
                self.cache.keep(slot.seq_id, list(slot.tokens), self._checkpoint_of(slot))
            self.cache.save()

    def unpark_all(self) -> None:
        """Every parked sequence back into the KV cache."""
        if self.snapshots is not None:
            for seq_id in list(self.snapshots.parked):
                self.snapshots.unpark(seq_id)

    # -- parking (sliding-window models) ---------------------------------------------------------

    def _unpark(self, slot: Slot, tokens: list[int]) -> None:
        """Put the slot's parked sequence back if the prompt can reuse any of it; else its
        state, copied out already, goes to the prompt cache."""
        assert self.snapshots is not None
        if self._usable(slot, common_prefix(slot.tokens, tokens)) == 0:
            parked = self.snapshots.parked.get(slot.seq_id)
            if self.cache is not None and parked is not None:
                checkpoint = self._checkpoint_of(slot)
                self.cache.keep_state(list(slot.tokens), parked.data, parked.pos_min, checkpoint)
            self.snapshots.drop_parked(slot.seq_id)
            slot.tokens.clear()
        else:
            self.snapshots.unpark(slot.seq_id)

    def _park_idle(self) -> None:
        """Before a long prompt: the idle sequences out of the KV cache (llama_snapshots.py)."""
        assert self.snapshots is not None
        for slot in self.all:
            if not slot.busy and slot.tokens:
                self.snapshots.park(slot.seq_id)

    def _lost(self, seq_id: int) -> None:
        """A parked sequence could not be put back: its slot holds nothing now."""
        self.all[seq_id].tokens.clear()
        if self.snapshots is not None:
            self.snapshots.forget(seq_id, 0)

    # -- slot choice and prefix reuse ------------------------------------------------------------

    def _pick(self, tokens: list[int]) -> Slot:
        """The free slot whose choice costs the fewest tokens. Continuing the slot that shares
        the longest prefix loses its tokens past that prefix; moving to another slot loses all
        of that slot's tokens (an empty one loses none), and the shared prefix is copied over,
        or on a sliding-window model evaluated again. So a follow-up turn or the next
        keystroke's autocomplete stays in its slot, while a second agent session that shares
        only the system prompt takes another slot and leaves the first session's cache alone."""
        free = [s for s in self.all if not s.busy]
        shared = {s.seq_id: self._usable(s, common_prefix(s.tokens, tokens)) for s in free}
        best = max(free, key=lambda s: (shared[s.seq_id], -s.last_used))
        others = [s for s in free if s is not best]
        if others:
            victim = min(others, key=lambda s: (len(s.tokens), s.last_used))
            n = shared[best.seq_id]
            if len(victim.tokens) + (0 if self.can_copy else n) < len(best.tokens) - n:
                return victim
        return best

    def _reuse_prefix(self, slot: Slot, tokens: list[int]) -> int:
        """Keep the slot's longest usable prefix, or copy a longer one from another slot; at
        least one token is always left to evaluate (for its logits). The slot's window
        checkpoint survives only in its own prefix."""
        n, own = self._reuse(slot, tokens)
        if self.snapshots is not None:
            self.snapshots.forget(slot.seq_id, n if own else 0)
        return n

    def _reuse(self, slot: Slot, tokens: list[int]) -> tuple[int, bool]:
        """_reuse_prefix's choice: the tokens reused, and whether they are the slot's own.
        The longest source wins by MIN_COPY tokens over a nearer one: the slot's own prefix,
        another slot's (copied), a snapshot, then the prompt cache's RAM and disk tiers. What
        the slot loses goes to the prompt cache first."""
        limit = len(tokens) - 1
        own = self._usable(slot, min(common_prefix(slot.tokens, tokens), limit))
        best = own
        source: tuple[str, Any] | None = None  # None: the slot's own prefix
        for other in self.all if self.can_copy else ():
            n = min(common_prefix(other.tokens, tokens), limit)
            if other is not slot and n >= best + MIN_COPY and self._window_kept(other, n):
                best, source = n, ("copy", other)
        snap, n_snap = self.snapshots.best(tokens, limit) if self.snapshots else (None, 0)
        if snap is not None and n_snap >= best + MIN_COPY:
            best, source = n_snap, ("snapshot", snap)
        entry, n_entry = self.cache.best(tokens, limit) if self.cache else (None, 0)
        if entry is not None and n_entry >= best + MIN_COPY:
            best, source = n_entry, ("cache", entry)
        self._leave(slot, own if source is None else 0)
        if source is not None:
            return (best if self._take_from(slot, source, best) else 0), False
        return self._keep_own(slot, tokens, own), True

    def _take_from(self, slot: Slot, source: tuple[str, Any], n: int) -> bool:
        """Fill the slot with the first ``n`` tokens of another slot, a snapshot or a prompt
        cache entry; False (the slot emptied) when llama.cpp refuses."""
        lib, mem = self.llama.lib, self.llama.mem
        kind, item = source
        lib.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
        slot.tokens = []
        if kind == "copy":
            lib.llama_memory_seq_cp(mem, item.seq_id, slot.seq_id, 0, n)
        elif kind == "snapshot":
            assert self.snapshots is not None
            if not self.snapshots.load(slot.seq_id, item):
                return False
            lib.llama_memory_seq_rm(mem, slot.seq_id, n, -1)
        else:
            assert self.cache is not None
            if self.cache.restore(slot.seq_id, item, n) != n:
                return False
        slot.tokens = list(item.tokens[:n])
        return True

    def _keep_own(self, slot: Slot, tokens: list[int], own: int) -> int:
        """Trim the slot to its own usable prefix (putting its window checkpoint back when the
        window before that prefix is gone); 0 and emptied when nothing of it serves."""
        lib, mem = self.llama.lib, self.llama.mem
        if own and not self._window_kept(slot, own):
            raw = min(common_prefix(slot.tokens, tokens), len(tokens) - 1)
            own = self.snapshots.restore_checkpoint(slot.seq_id, raw) if self.snapshots else 0
        if own and lib.llama_memory_seq_rm(mem, slot.seq_id, own, -1):
            del slot.tokens[own:]
            return own
        lib.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
        slot.tokens.clear()
        return 0

    def _leave(self, slot: Slot, keep: int) -> None:
        """The slot keeps only its first ``keep`` tokens: when it loses MIN_SAVE or more, its
        sequence (and window checkpoint) is copied to the prompt cache first."""
        if self.cache is None or len(slot.tokens) - keep < MIN_SAVE:
            return
        self.cache.keep(slot.seq_id, list(slot.tokens), self._checkpoint_of(slot))

    def _checkpoint_of(self, slot: Slot) -> tuple[int, Any] | None:
        cp = self.snapshots.checkpoints.get(slot.seq_id) if self.snapshots else None
        return (cp.n_tokens, cp.data) if cp is not None else None

    def _usable(self, slot: Slot, keep: int) -> int:
        """How many of the slot's first ``keep`` tokens can be reused: all if the window
        before them is cached, as many as its window checkpoint covers, or none."""
        if self._window_kept(slot, keep):
            return keep
        cp = self.snapshots.checkpoints.get(slot.seq_id) if self.snapshots else None
        return cp.n_tokens if cp is not None and cp.n_tokens <= keep else 0

    def _window_kept(self, slot: Slot, keep: int) -> bool:
        """Sliding-window layers drop positions older than their window; a prefix ending at
        ``keep`` is reusable only if the window before it is still cached (as llama-server
        checks), else the prompt is evaluated from the start."""
        n_swa = self.llama.n_swa
        if n_swa <= 0 or keep <= 0:
            return True
        if self.snapshots is not None:
            oldest = self.snapshots.pos_min(slot.seq_id)
        else:
            oldest = int(self.llama.lib.llama_memory_seq_pos_min(self.llama.mem, slot.seq_id))
        return oldest <= max(0, keep - n_swa)
