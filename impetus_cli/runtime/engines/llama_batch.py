"""Continuous batching on one llama.cpp context: the scheduler behind LlamaEngine.generate.

The context holds ``n_parallel`` sequences (``Slot``). One thread owns it and loops: admit
waiting requests into free slots, build one ``llama_batch`` with the next token of every slot
that is generating plus as much of the prompts being evaluated as ``n_batch`` leaves room for,
decode it once, and sample every slot that got logits. A new request therefore joins between
two decode steps instead of waiting for the others to finish, and four streams cost about one
pass over the weights per step instead of four (llama-server works the same way).

Prompt caching: each slot keeps the tokens its part of the KV cache holds, so a prompt that
extends them evaluates only the new tokens. A request goes to the free slot whose choice evicts
the fewest cached tokens (``_pick_slot``); when another slot, even a busy one, holds a longer
prefix of the prompt (the system prompt two agent sessions share), its cells are copied
(``llama_memory_seq_cp``: in the unified KV cache the copy shares the cells, nothing is evaluated),
except on models with a sliding window (see ``can_copy``), which keep snapshots of shared prefixes
instead, and park idle sequences out of the KV cache before a long prompt (llama_snapshots.py).

The consumer side (``Request.out``) is a queue of chunks read by the thread that called
``generate``; detokenization and stop strings run here so a finished slot is free at once.
"""

from __future__ import annotations

import codecs
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import EngineError, ImpetusError
from impetus_cli.runtime.engines.llama_cache import DiskCache
from impetus_cli.runtime.engines.llama_native import Sampler, llama_said
from impetus_cli.runtime.engines.llama_snapshots import Snapshots
from impetus_cli.runtime.types import GenerationChunk, SamplingParams

# A prefix is copied from another slot only when it saves at least this many tokens.
MIN_COPY = 16


@dataclass(eq=False)
class Slot:
    """One sequence of the context: its id, the tokens its KV cache holds, the request on it."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    request: Request | None = None
    last_used: float = 0.0


@dataclass(eq=False)
class Request:
    """One generation, from the queue to its final chunk."""

    tokens: list[int]
    sampling: SamplingParams
    cancel: threading.Event
    limit: int
    out: queue.SimpleQueue[GenerationChunk | BaseException] = field(
        default_factory=queue.SimpleQueue
    )
    abandoned: bool = False  # the consumer stopped reading
    slot: Slot | None = None
    sampler: Sampler | None = None
    cached: int = 0  # prompt tokens reused from the cache
    fed: int = 0  # prompt tokens in the cache so far (cached + evaluated)
    checkpoint: int = 0  # snapshot the sequence when ``fed`` reaches this (0: never)
    window_at: int = 0  # take a window checkpoint when ``fed`` reaches this (0: never)
    next_token: int = -1  # sampled, goes into the next batch
    generated: int = 0
    pending: list[int] = field(default_factory=list)  # token ids not yet sent with text
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    stops: Any = None
    start: float = field(default_factory=time.perf_counter)
    prompt_done: float = 0.0
    first_at: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set() or self.abandoned

    def abandon(self) -> None:
        self.abandoned = True


class Scheduler:
    """Owns the context's decode loop in one thread; requests come in through ``submit``."""

    def __init__(
        self,
        engine: Any,
        n_slots: int,
        n_batch: int,
        disk: DiskCache | None = None,
        snapshot_bytes: int = 0,
    ):
        self.e = engine  # the LlamaEngine: lib, ctx, vocab, memory, piece()
        self.disk = disk
        self.lib = engine._lib
        self.slots = [Slot(i) for i in range(n_slots)]
        self.n_batch = n_batch
        self.batch = self.lib.llama_batch_init(max(n_batch, n_slots), 0, 1)
        self.n_swa = int(self.lib.llama_model_n_swa(engine._model))
        # Copies share cells, and llama.cpp reuses a sliding-window cell past its window only
        # when one sequence holds it: copied prefixes would fill the small window cache until
        # decoding fails ("failed to find a memory slot"). So models with a window never copy.
        self.can_copy = self.n_swa <= 0
        self.snapshots: Snapshots | None = None
        if not self.can_copy and snapshot_bytes > 0:
            self.snapshots = Snapshots(
                self.lib, engine._ctx, engine._mem, self.n_swa, snapshot_bytes, self._lost
            )
        self._waiting: list[Request] = []
        self._active: list[Request] = []  # admitted, in admission order
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="impetus-llama", daemon=True)
        self._thread.start()

    # -- the consumer side ---------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._cv:
            if self._closed:
                raise EngineError("The model was unloaded.", "Send the request again.")
            self._waiting.append(request)
            self._cv.notify()

    def close(self) -> None:
        """Stop the loop (requests still running end with an error) and free the batch."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()
        self.lib.llama_batch_free(self.batch)

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._active or self._closed):
                    self._cv.wait()
                if self._closed:
                    break
                free = [s for s in self.slots if s.request is None]
                admit, self._waiting = self._waiting[: len(free)], self._waiting[len(free) :]
            for request in admit:
                self._admit(request)
            if self._active:
                self._step()
        gone = EngineError("The model was unloaded while generating.", "Send the request again.")
        for request in self._active + self._waiting:
            self._release(request)
            request.out.put(gone)

    def _admit(self, r: Request) -> None:
        """Give the request a slot, reuse (or copy in) the longest cached prefix, and set up its
        sampler; a request that cannot start gets its error through its queue."""
        if r.stopped:
            r.out.put(self._final(r, "cancelled"))
            return
        slot = self._pick_slot(r.tokens)
        slot.request, slot.last_used, r.slot = r, time.monotonic(), slot
        # the longest prefix any sequence shares with the prompt, before this one is trimmed
        shared = max(common_prefix(s.tokens, r.tokens) for s in self.slots) if self.snapshots else 0
        if self.snapshots is not None and slot.seq_id in self.snapshots.parked:
            self._unpark(slot, r.tokens)
        r.cached = r.fed = self._reuse_prefix(slot, r.tokens)
        if self.snapshots is not None:
            r.checkpoint = self.snapshots.wanted(r.tokens, min(shared, len(r.tokens) - 1), r.cached)
            at = self.snapshots.checkpoint_at(len(r.tokens))
            r.window_at = at if at > r.fed else 0
            if len(r.tokens) - r.cached >= self.n_batch:
                self._park_idle()
        self.e.last_cached_tokens = r.cached
        self.e.last_evaluated_tokens = len(r.tokens) - r.cached
        from impetus_cli.runtime.stops import StopMatcher

        r.stops = StopMatcher(r.sampling.stop)
        try:
            r.sampler = Sampler(self.lib, self.e._vocab, self.e._n_vocab, r.sampling, r.tokens)
        except ImpetusError as exc:
            self._release(r)
            r.out.put(exc)
            return
        self._active.append(r)

    def _unpark(self, slot: Slot, tokens: list[int]) -> None:
        """Put the slot's parked sequence back if the prompt can reuse any of it."""
        assert self.snapshots is not None
        if self._usable(slot, common_prefix(slot.tokens, tokens)) == 0:
            self.snapshots.drop_parked(slot.seq_id)
            slot.tokens.clear()
        else:
            self.snapshots.unpark(slot.seq_id)

    def _park_idle(self) -> None:
        """Before a long prompt: the idle sequences out of the KV cache (llama_snapshots.py)."""
        assert self.snapshots is not None
        for slot in self.slots:
            if slot.request is None and slot.tokens:
                self.snapshots.park(slot.seq_id)

    def _lost(self, seq_id: int) -> None:
        """A parked sequence could not be put back: its slot holds nothing now."""
        self.slots[seq_id].tokens.clear()
        if self.snapshots is not None:
            self.snapshots.forget(seq_id, 0)

    def unpark_all(self) -> None:
        """Every parked sequence back into the KV cache (before the slots are saved to disk);
        only once the loop has stopped."""
        if self.snapshots is not None:
            for seq_id in list(self.snapshots.parked):
                self.snapshots.unpark(seq_id)

    def _pick_slot(self, tokens: list[int]) -> Slot:
        """The free slot whose choice costs the fewest tokens. Continuing the slot that shares
        the longest prefix loses its tokens past that prefix; moving to another slot loses all
        of that slot's tokens (an empty one loses none), and the shared prefix is copied over,
        or on a sliding-window model evaluated again. So a follow-up turn or the next
        keystroke's autocomplete stays in its slot, while a second agent session that shares
        only the system prompt takes another slot and leaves the first session's cache alone."""
        free = [s for s in self.slots if s.request is None]
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
        """_reuse_prefix's choice: the tokens reused, and whether they are the slot's own."""
        limit = len(tokens) - 1
        own = min(common_prefix(slot.tokens, tokens), limit)
        if not self._window_kept(slot, own):
            own = self.snapshots.restore_checkpoint(slot.seq_id, own) if self.snapshots else 0
        donor, best = None, own
        for other in self.slots if self.can_copy else ():
            if other is not slot:
                n = min(common_prefix(other.tokens, tokens), limit)
                if n >= best + MIN_COPY and self._window_kept(other, n):
                    donor, best = other, n
        mem = self.e._mem
        snap, n_snap = self.snapshots.best(tokens, limit) if self.snapshots else (None, 0)
        if self.disk is not None and self._restore(slot, tokens, limit, max(best, n_snap)):
            return min(len(slot.tokens), limit), False
        if snap is not None and n_snap >= best + MIN_COPY and self.snapshots is not None:
            if self.snapshots.load(slot.seq_id, snap):
                self.lib.llama_memory_seq_rm(mem, slot.seq_id, n_snap, -1)
                slot.tokens = snap.tokens[:n_snap]
                return n_snap, False
            slot.tokens, own = [], 0  # the load emptied the sequence
        if donor is not None:
            self.lib.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
            self.lib.llama_memory_seq_cp(mem, donor.seq_id, slot.seq_id, 0, best)
            slot.tokens = donor.tokens[:best]
            return best, False
        if own and self.lib.llama_memory_seq_rm(mem, slot.seq_id, own, -1):
            del slot.tokens[own:]
            return own, True
        self.lib.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
        slot.tokens.clear()
        return 0, False

    def _restore(self, slot: Slot, tokens: list[int], limit: int, best: int) -> bool:
        """Load the disk entry sharing the longest prefix into ``slot`` when it beats ``best``
        by MIN_COPY tokens, and trim it to that prefix."""
        assert self.disk is not None
        entry, n = self.disk.best(tokens, limit)
        if entry is None or n < best + MIN_COPY:
            return False
        self.lib.llama_memory_seq_rm(self.e._mem, slot.seq_id, -1, -1)
        slot.tokens = []
        restored = self.disk.load(self.lib, self.e._ctx, slot.seq_id, entry)
        if restored is None:
            self.lib.llama_memory_seq_rm(self.e._mem, slot.seq_id, -1, -1)
            return False
        self.lib.llama_memory_seq_rm(self.e._mem, slot.seq_id, n, -1)
        slot.tokens = restored[:n]
        return True

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
        if self.n_swa <= 0 or keep <= 0:
            return True
        if self.snapshots is not None:
            oldest = self.snapshots.pos_min(slot.seq_id)
        else:
            oldest = int(self.lib.llama_memory_seq_pos_min(self.e._mem, slot.seq_id))
        return oldest <= max(0, keep - self.n_swa)

    def _step(self) -> None:
        """One llama_decode: every generating slot's next token, then prompt chunks."""
        batch, n = self.batch, 0
        parts: list[tuple[Request, list[int], int]] = []  # request, tokens added, logits index
        for r in list(self._active):
            if r.stopped:
                self._finish(r, "cancelled")
            elif r.fed == len(r.tokens):
                n = self._put(n, r, [r.next_token], logits=True)
                parts.append((r, [r.next_token], n - 1))
        for r in self._active:
            room = self.n_batch - n
            if r.fed == len(r.tokens) or room <= 0:
                continue
            end = min(p for p in (r.checkpoint, r.window_at, len(r.tokens)) if p > r.fed)
            chunk = r.tokens[r.fed : min(r.fed + room, end)]
            last = r.fed + len(chunk) == len(r.tokens)
            n = self._put(n, r, chunk, logits=last)
            parts.append((r, chunk, n - 1 if last else -1))
            r.fed += len(chunk)
        if n == 0:
            return
        batch.n_tokens = n
        code = self.lib.llama_decode(self.e._ctx, batch)
        if code != 0:
            self._fail_batch(parts, code)
            return
        now = time.perf_counter()
        for r, added, index in parts:
            assert r.slot is not None
            r.slot.tokens.extend(added)
            if self.snapshots is not None and r.fed in (r.checkpoint, r.window_at):
                self._take(r)
            if index < 0:
                continue
            if not r.prompt_done:
                r.prompt_done = now
                if r.limit <= 0:
                    self._finish(r, "length")
                    continue
            self._sample(r, index)

    def _take(self, r: Request) -> None:
        """The prompt reached a planned stop: take the snapshot or window checkpoint there."""
        assert self.snapshots is not None and r.slot is not None
        if r.fed == r.checkpoint:
            self.snapshots.take(r.slot.seq_id, r.slot.tokens)
            r.checkpoint = 0
        if r.fed == r.window_at:
            self.snapshots.take_checkpoint(r.slot.seq_id, r.fed)
            r.window_at = 0

    def _put(self, n: int, r: Request, tokens: list[int], *, logits: bool) -> int:
        """Append ``tokens`` of ``r``'s sequence to the batch at ``n``; returns the new size."""
        assert r.slot is not None
        batch, seq, base = self.batch, r.slot.seq_id, len(r.slot.tokens)
        for i, token in enumerate(tokens):
            batch.token[n + i] = token
            batch.pos[n + i] = base + i
            batch.n_seq_id[n + i] = 1
            batch.seq_id[n + i][0] = seq
            batch.logits[n + i] = 0
        n += len(tokens)
        batch.logits[n - 1] = logits
        return n

    def _sample(self, r: Request, index: int) -> None:
        """Sample ``r``'s next token from the logits at ``index`` and stream its text."""
        assert r.sampler is not None
        ctx = self.e._ctx
        token = r.sampler.sample(ctx, index)
        r.first_at = r.first_at or time.perf_counter()
        if self.lib.llama_vocab_is_eog(self.e._vocab, token) and not r.sampling.ignore_eos:
            self._finish(r, "stop")
            return
        r.generated += 1
        r.pending.append(token)
        if r.sampling.logprobs is not None:
            chosen, top = r.sampler.logprobs(ctx, index, token, r.sampling.logprobs)
            r.logprobs.append(chosen)
            r.top_logprobs.append(top)
        text, stopped = r.stops.feed(r.decoder.decode(self.e._piece(token)))
        if text:
            r.out.put(self._chunk(r, text))
        if stopped:
            self._finish(r, "stop")
        elif r.generated >= r.limit:
            self._finish(r, "length")
        else:
            r.next_token = token

    def _chunk(self, r: Request, text: str, **final: Any) -> GenerationChunk:
        chunk = GenerationChunk(
            text=text,
            token_ids=tuple(r.pending),
            logprobs=tuple(r.logprobs),
            top_logprobs=tuple(r.top_logprobs),
            **final,
        )
        r.pending, r.logprobs, r.top_logprobs = [], [], []
        return chunk

    def _finish(self, r: Request, reason: str) -> None:
        self._release(r)
        r.out.put(self._final(r, reason))

    def _final(self, r: Request, reason: str) -> GenerationChunk:
        """The last chunk: text held back as a possible stop-string start (unless a stop
        string hit), the finish reason and the counters."""
        tail = ""
        if r.stops is not None:
            tail = r.stops.flush() + r.decoder.decode(b"", final=True)
            tail = "" if r.stops.stopped else tail
        end = time.perf_counter()
        evaluated = len(r.tokens) - r.cached
        prompt_s = (r.prompt_done or end) - r.start
        decode_s = end - (r.first_at or end)
        return self._chunk(
            r,
            tail,
            finish_reason=reason,
            prompt_tokens=len(r.tokens),
            cached_tokens=r.cached,
            completion_tokens=r.generated,
            prompt_tps=evaluated / prompt_s if r.prompt_done and prompt_s > 0 else 0.0,
            generation_tps=(r.generated - 1) / decode_s
            if decode_s > 0 and r.generated > 1
            else 0.0,
            ttft_s=(r.first_at or end) - r.start,
        )

    def _release(self, r: Request) -> None:
        """Free the request's sampler and slot. A prompt cut short leaves the slot's tokens as
        far as they were evaluated, which is still a valid prefix."""
        if r in self._active:
            self._active.remove(r)
        if r.sampler is not None:
            r.sampler.free()
            r.sampler = None
        if r.slot is not None:
            r.slot.request = None
            r.slot = None

    def _fail_batch(self, parts: list[tuple[Request, list[int], int]], code: int) -> None:
        """A failed decode leaves the cache of its sequences unknown: clear them and fail their
        requests; the other slots and the server carry on."""
        error = EngineError(
            f"llama_decode failed with code {code}.{llama_said()}",
            "The context may be full: start a new conversation or load a larger --ctx.",
        )
        for r in {id(r): r for r, _, _ in parts}.values():
            if r.slot is not None:
                self.lib.llama_memory_seq_rm(self.e._mem, r.slot.seq_id, -1, -1)
                r.slot.tokens.clear()
                if self.snapshots is not None:
                    self.snapshots.forget(r.slot.seq_id, 0)
            self._release(r)
            r.out.put(error)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
