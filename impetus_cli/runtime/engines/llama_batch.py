"""Continuous batching on one llama.cpp context: the scheduler behind LlamaEngine.generate.

The context holds ``n_parallel`` sequences (llama_slots.py). One thread (worker.py's loop) owns
it: admit waiting requests into free slots, build one ``llama_batch`` with the next token of
every slot that is generating plus as much of the prompts being evaluated as ``n_batch`` leaves
room for, decode it once, and sample every slot that got logits. A new request therefore joins
between two decode steps instead of waiting for the others to finish, and four streams cost
about one pass over the weights per step instead of four (llama-server works the same way).

With speculation on (speculative.py), a generating slot may put a draft after its next token;
every position of it gets logits and ``_verify`` samples them in order with the request's own
sampler, keeping the draft as far as the samples agree with it. Other slots decode in the same
step as before.

The consumer side (``Request.out``) is a queue of chunks read by the thread that called
``generate``; detokenization and stop strings run here so a finished slot is free at once.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import EngineError, ImpetusError
from impetus_cli.runtime.engines.common import Health, Pending
from impetus_cli.runtime.engines.llama_native import LlamaContext, Sampler, llama_said
from impetus_cli.runtime.engines.llama_slots import Slot, Slots
from impetus_cli.runtime.engines.speculative import Drafter, Speculation, Want
from impetus_cli.runtime.engines.worker import Worker
from impetus_cli.runtime.types import GenerationChunk, SamplingParams


@dataclass(eq=False)
class Request(Pending):
    """One generation on the context: its slot, its sampler, and how far it has got."""

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
    preserved: frozenset[int] = frozenset()  # control tokens the reply shows (markers)
    prompt_done: float = 0.0
    first_at: float = 0.0
    spec: Speculation | None = None  # its drafts and their counters (None: no speculation)
    unverified: int = 0  # draft tokens at the end of the slot's cache not verified yet
    argmax: bool = False  # its sampler chain is greedy and nothing else (see _pick)
    instructions: int = 0  # the prompt's shared instructions end here (prepare.instructions_end)


def greedy_alone(s: SamplingParams) -> bool:
    """Whether the sampler chain of ``s`` is the greedy sampler alone (llama_native.Sampler)."""
    penalties = s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty
    return s.temperature <= 0 and not (s.grammar or s.logit_bias or penalties or s.dry)


# A step: each request with the tokens it added, the batch index of its first logits (-1: none)
# and how many of the tokens are a draft (their logits follow the first's).
Part = tuple[Request, list[int], int, int]


class Scheduler(Worker[Request]):
    """Owns the context's decode loop; requests come in through ``stream``."""

    def __init__(
        self,
        llama: LlamaContext,
        slots: Slots,
        n_batch: int,
        health: Health,
        drafter: Drafter | None = None,
    ):
        super().__init__("impetus-llama", health)
        self.llama, self.slots, self.n_batch = llama, slots, n_batch
        self.drafter = drafter or Drafter("off")
        # On a sliding-window cache a step with drafts stays within one micro-batch: llama.cpp
        # then reuses only cells outside every window of the step, so dropping the rejected
        # part of a draft leaves the window the sequence continues from whole.
        n_ubatch = int(llama.lib.llama_n_ubatch(llama.ctx))
        self.draft_batch = min(n_batch, n_ubatch) if llama.n_swa > 0 else n_batch
        self.batch = llama.lib.llama_batch_init(max(n_batch, len(slots.all)), 0, 1)
        self._active: list[Request] = []  # admitted, in admission order
        self.last_cached_tokens = 0  # of the last request admitted: the tests read them
        self.last_evaluated_tokens = 0
        self.start()

    # -- the worker loop's hooks ---------------------------------------------------------------

    def _room(self) -> int:
        return self.slots.n_free

    def _held(self) -> list[Request]:
        return list(self._active)

    def _admit(self, r: Request) -> None:
        """Give the request a slot and the longest cached prefix there, and set up its
        sampler; a request that cannot start gets its error through its queue."""
        if r.stopped:
            r.out.put(self._final(r, "cancelled"))
            return
        r.slot = self.slots.take(r.tokens)
        placed = self.slots.place(r.slot, r.tokens, self.n_batch, r.instructions)
        r.cached = r.fed = placed.cached
        r.checkpoint, r.window_at = placed.snapshot_at, placed.window_at
        self.last_cached_tokens = r.cached
        self.last_evaluated_tokens = len(r.tokens) - r.cached
        from impetus_cli.runtime.stops import StopMatcher

        r.stops = StopMatcher(r.sampling.stop)
        try:
            llama = self.llama
            context = len(r.tokens) + r.limit
            r.sampler = Sampler(
                llama.lib, llama.vocab, llama.n_vocab, r.sampling, r.tokens, context
            )
        except ImpetusError as exc:
            self._release(r)
            r.out.put(exc)
            return
        r.spec = self.drafter.start(r.tokens, r.limit)
        r.argmax = greedy_alone(r.sampling)
        self._active.append(r)

    def _let_go(self, requests: list[Request], *, failed: bool) -> None:
        for r in requests:
            try:
                if failed and r.slot is not None:
                    self.slots.clear(r.slot)
            finally:
                self._release(r)

    def _loop_ended(self) -> None:
        self.llama.lib.llama_batch_free(self.batch)
        self.drafter.close()

    # -- one decode step -----------------------------------------------------------------------

    def _step(self) -> None:
        """One llama_decode: every generating slot's next token (and its draft), then prompt
        chunks."""
        for r in list(self._active):
            if r.stopped:
                self._finish(r, "cancelled")
        generating = [r for r in self._active if r.fed == len(r.tokens)]
        drafts = self._drafts(generating)
        n, limit = 0, self.draft_batch if any(drafts) else self.n_batch
        parts: list[Part] = []
        for r, draft in zip(generating, drafts, strict=True):
            added = [r.next_token, *draft]
            n = self._put(n, r, added, logits=True, every=bool(draft))
            parts.append((r, added, n - len(added), len(draft)))
        for r in self._active:
            room = limit - n
            if r.fed == len(r.tokens) or room <= 0:
                continue
            end = min(p for p in (r.checkpoint, r.window_at, len(r.tokens)) if p > r.fed)
            chunk = r.tokens[r.fed : min(r.fed + room, end)]
            last = r.fed + len(chunk) == len(r.tokens)
            n = self._put(n, r, chunk, logits=last)
            parts.append((r, chunk, n - 1 if last else -1, 0))
            r.fed += len(chunk)
        if n == 0:
            return
        self.batch.n_tokens = n
        code = self.llama.lib.llama_decode(self.llama.ctx, self.batch)
        if code != 0:
            self._fail_batch(parts, code)
            return
        self._after_decode(parts)

    def _after_decode(self, parts: list[Part]) -> None:
        """Record what each sequence now holds, then sample where there are logits."""
        now = time.perf_counter()
        for r, added, index, drafted in parts:
            slot = r.slot
            assert slot is not None
            slot.tokens.extend(added)
            if self.slots.snapshots is not None and r.fed in (r.checkpoint, r.window_at):
                self._take(r)
            if index < 0:
                continue
            if not r.prompt_done:
                r.prompt_done = now
                self.slots.prompt_evaluated(len(r.tokens) - r.cached, now - r.start)
                if r.limit <= 0:
                    self._finish(r, "length")
                    continue
            if drafted:
                self._verify(r, slot, added, index)
            else:
                self._sample(r, index)

    def _drafts(self, generating: list[Request]) -> list[list[int]]:
        """A draft for each generating request (empty where there is none), within the room the
        batch leaves. A request drafts no more than its reply has left after the token it feeds
        now, so its sequence never outgrows its context."""
        if not self.drafter.on or not generating:
            return [[] for _ in generating]
        wants: list[Want | None] = []
        for r in generating:
            assert r.slot is not None
            room = r.limit - r.generated - 1
            if r.spec is None or room <= 0:
                wants.append(None)
                continue
            wants.append(Want(r.spec, r.slot.seq_id, [*r.slot.tokens, r.next_token], room))
        asked = [w for w in wants if w is not None]
        found = iter(
            self.drafter.drafts(asked, self.draft_batch - len(generating), len(generating))
        )
        return [[] if w is None else next(found) for w in wants]

    def _verify(self, r: Request, slot: Slot, added: list[int], index: int) -> None:
        """Sample the positions of a token fed with its draft, in order, while the samples
        agree with the draft (each agreeing draft token was fed already, so the next position's
        logits are there), then drop the rest of the draft from the KV cache. The request's
        sampler sees the calls and logits it would see in plain decoding."""
        assert r.spec is not None
        drafted = len(added) - 1
        r.spec.drafted += drafted  # before sampling: a request that ends reports them
        r.unverified = drafted  # a request that ends drops them as it releases its slot
        for i in range(len(added)):
            token = self._sample(r, index + i)
            if token is None:
                return
            if i == drafted or token != added[i + 1]:
                break
            r.spec.accepted += 1
            r.unverified -= 1
        r.spec.adapt(drafted, drafted - r.unverified)
        self._drop_unverified(r, slot)

    def _drop_unverified(self, r: Request, slot: Slot) -> None:
        """Remove the draft tokens past the last verified one from the slot's KV cache."""
        if r.unverified > 0:
            n_keep = len(slot.tokens) - r.unverified
            self.llama.lib.llama_memory_seq_rm(self.llama.mem, slot.seq_id, n_keep, -1)
            del slot.tokens[n_keep:]
        r.unverified = 0

    def _take(self, r: Request) -> None:
        """The prompt reached a planned stop: take the snapshot or window checkpoint there."""
        snapshots = self.slots.snapshots
        assert snapshots is not None and r.slot is not None
        if r.fed == r.checkpoint:
            snapshots.take(r.slot.seq_id, r.slot.tokens)
            r.checkpoint = 0
        if r.fed == r.window_at:
            snapshots.take_checkpoint(r.slot.seq_id, r.fed)
            r.window_at = 0

    def _put(
        self, n: int, r: Request, tokens: list[int], *, logits: bool, every: bool = False
    ) -> int:
        """Append ``tokens`` of ``r``'s sequence to the batch at ``n`` (logits for the last one,
        or with ``every`` for each); returns the new size."""
        assert r.slot is not None
        batch, seq, base = self.batch, r.slot.seq_id, len(r.slot.tokens)
        for i, token in enumerate(tokens):
            batch.token[n + i] = token
            batch.pos[n + i] = base + i
            batch.n_seq_id[n + i] = 1
            batch.seq_id[n + i][0] = seq
            batch.logits[n + i] = every
        n += len(tokens)
        batch.logits[n - 1] = logits
        return n

    def _sample(self, r: Request, index: int) -> int | None:
        """Sample ``r``'s next token from the logits at ``index`` and stream its text; the
        token, or None when the request ended with it."""
        assert r.sampler is not None
        ctx = self.llama.ctx
        token = self._pick(r, index)
        r.first_at = r.first_at or time.perf_counter()
        if self.llama.lib.llama_vocab_is_eog(self.llama.vocab, token) and not r.sampling.ignore_eos:
            self._finish(r, "stop")
            return None
        r.generated += 1
        r.pending.append(token)
        if r.sampling.logprobs is not None:
            chosen, top = r.sampler.logprobs(ctx, index, token, r.sampling.logprobs)
            r.logprobs.append(chosen)
            r.top_logprobs.append(top)
        piece = self.llama.piece(token, token in r.preserved)
        text, stopped = r.stops.feed(r.decoder.decode(piece))
        if text:
            r.out.put(self._chunk(r, text))
        if stopped:
            self._finish(r, "stop")
        elif r.generated >= r.limit:
            self._finish(r, "length")
        else:
            r.next_token = token
            if r.spec is not None:
                r.spec.add(token)
            return token
        return None

    def _pick(self, r: Request, index: int) -> int:
        """The sampler chain's pick. A chain that is greedy alone picks the first best logit,
        which numpy finds without the chain copying the vocabulary into its candidates (a
        noticeable part of a small model's step, paid per token)."""
        assert r.sampler is not None
        if not r.argmax:
            return r.sampler.sample(self.llama.ctx, index)
        import numpy as np

        logits = self.llama.lib.llama_get_logits_ith(self.llama.ctx, index)
        return int(np.ctypeslib.as_array(logits, (self.llama.n_vocab,)).argmax())

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
        if reason in ("stop", "length"):
            self.health.recovered()

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
            drafted_tokens=r.spec.drafted if r.spec is not None else 0,
            accepted_tokens=r.spec.accepted if r.spec is not None else 0,
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
            self._drop_unverified(r, r.slot)
            self.slots.release(r.slot)
            r.slot = None

    def _fail_batch(self, parts: list[Part], code: int) -> None:
        """A failed decode leaves the cache of its sequences unknown: clear them and fail their
        requests; the other slots and the server carry on."""
        error = EngineError(
            f"llama_decode failed with code {code}.{llama_said()}",
            "The context may be full: start a new conversation or load a larger --ctx.",
        )
        for r in {id(r): r for r, *_ in parts}.values():
            if r.slot is not None:
                self.slots.clear(r.slot)
            self._release(r)
            r.out.put(error)
