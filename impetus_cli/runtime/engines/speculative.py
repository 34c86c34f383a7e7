"""Speculative decoding on the llama.cpp scheduler: which tokens to guess, and how many.

A generating sequence normally feeds one token per decode step. When the next tokens can be
guessed (a draft), the scheduler feeds the sampled token and the draft together, with logits at
every position, and samples position after position with the request's own sampler chain:
as long as the sampled token equals the draft's, that draft token was already fed and its
logits are ready, so the next position is sampled at once; at the first difference the sampled
token becomes the next one to feed and the rest of the draft is dropped from the KV cache. The
sampler sees exactly the calls, logits and state that plain decoding would give it, so the
reply is plain decoding's (the same text at temperature 0, the same distribution otherwise);
only the number of decode steps changes. llama_batch.py does that verification; this module
proposes the drafts:

- ``Lookup`` (``--speculative ngram``): prompt lookup. The last few tokens of the prompt and
  reply so far are searched for earlier in them, and what followed there is the draft. Edits,
  refactors and "apply" requests repeat most of their input, so whole lines are guessed right.
- a draft model (``--speculative MODEL``, llama_draft.py): a small model with the same
  vocabulary generates the draft greedily; used where the lookup finds nothing.

How many tokens to draft adapts per request (``Speculation``): a draft that was taken whole
doubles the next one, a rejected one shrinks it, and a copy whose source has agreed with the
text for many tokens drafts that far at once (up to MAX_DRAFT). Drafting costs a verification
of every draft token, which on a CPU is a noticeable part of a decode step, so drafts are only
made where the lookup matched several tokens: text that does not repeat itself runs as plain
decoding. On the CPU a step's tokens are made a multiple of four (``CPU_STEP_MULTIPLE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Mode = Literal["off", "ngram", "draft"]

# How many tokens must match before a lookup drafts what followed them: at first, and at most
# (each new match whose draft is rejected outright asks for a longer one next time, so text
# that repeats short phrases only by chance soon stops paying for drafts).
NGRAM, MAX_NGRAM = 4, 16
# Draft length: the first draft, the cap, and the least after a rejection.
START, MAX_DRAFT, MIN_DRAFT = 2, 64, 2
# Draft tokens in one decode step over all sequences: bounds the step's latency for the others
# and the logits buffer llama.cpp keeps (one row of the vocabulary per draft token).
MAX_STEP_DRAFTS = 64
# ggml's CPU kernels multiply the model's (repacked) weights by four batch columns at a time and
# by each column left over on its own (ggml-cpu/repack.cpp), so on the CPU a step of 4n tokens
# costs less than one of 4n - 1: Gemma 3 270M, 2 threads, 4k tokens of context, 3 tokens 89 ms
# and 4 tokens 77 ms, 63 tokens 912 ms and 64 tokens 787 ms. A step with drafts there is
# rounded to a multiple of this: a lookup draft grows to it (the step costs less and may take
# more), or else the drafts lose the tokens past it.
CPU_STEP_MULTIPLE = 4


class Lookup:
    """Prompt lookup over one request's tokens (the prompt, then every token sampled)."""

    def __init__(self, prompt: Sequence[int], capacity: int, ngram: int = NGRAM):
        import numpy as np

        self.ngram = ngram
        self.fresh = False  # the last draft came from a new match, not the one followed before
        self.buf = np.zeros(len(prompt) + capacity + 1, dtype=np.int32)
        self.buf[: len(prompt)] = prompt
        self.size = len(prompt)
        self._source = -1  # where the last draft was copied from
        self._at = 0  # self.size then

    def append(self, token: int) -> None:
        if self.size < len(self.buf):
            self.buf[self.size] = token
            self.size += 1

    def propose(self, k: int, most: int = 0) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the last
        ``ngram`` tokens (the occurrence the previous draft came from, while it still
        matches); [] when they occur nowhere before. Where the text before that occurrence
        agrees with the text so far over more than ``k`` tokens (a long copy), the draft is as
        long as the agreement, up to ``most``: a copy that has held for a while is likely to
        hold on."""
        if k <= 0 or self.size <= self.ngram:
            return []
        source = self._follow()
        self.fresh = source < 0
        if source < 0:
            source = self._find()
        if source < 0:
            return []
        self._source, self._at = source, self.size
        if most > k:
            k = max(k, self._agreement(source, most))
        return self.lengthen(k)

    def lengthen(self, k: int) -> list[int]:
        """The last draft as ``k`` tokens: what followed its source (its first tokens are the
        shorter draft's)."""
        import numpy as np

        known = self.buf[self._source : min(self._source + k, self.size)]
        # A loop shorter than the draft repeats: what follows the known part is the draft itself.
        return [int(t) for t in np.resize(known, k)]

    def _agreement(self, source: int, cap: int) -> int:
        """How many tokens (at most ``cap``) before ``source`` equal the last ones."""
        import numpy as np

        n = min(cap, source)
        before = self.buf[source - n : source][::-1]
        tail = self.buf[self.size - n : self.size][::-1]
        differ = np.flatnonzero(before != tail)
        return int(differ[0]) if differ.size else n

    def _follow(self) -> int:
        """The previous draft's source, moved on by the tokens sampled since, if the last
        ``ngram`` tokens still match there (a copy stays on the copy it follows)."""
        if self._source < 0:
            return -1
        source = self._source + self.size - self._at
        n = self.ngram
        if source < n or source >= self.size:
            return -1
        return source if self._agreement(source, n) == n else -1

    def _find(self) -> int:
        """Where the latest earlier occurrence of the last ``ngram`` tokens ends, or -1."""
        import numpy as np

        buf, size = self.buf, self.size
        ends = np.flatnonzero(buf[: size - 1] == buf[size - 1]) + 1
        for j in range(2, self.ngram + 1):
            ends = ends[ends >= j]
            ends = ends[buf[ends - j] == buf[size - j]]
            if not ends.size:
                return -1
        return int(ends[-1])


@dataclass(eq=False)
class Speculation:
    """One request's speculation: its lookup (None: no n-gram drafts), the next draft's
    length, and the counters its final chunk reports."""

    lookup: Lookup | None
    length: int = START
    drafted: int = 0
    accepted: int = 0
    draft_model: bool = False  # the draft model may draft for it
    by_lookup: bool = False  # the last draft came from the lookup (else the draft model)

    def add(self, token: int) -> None:
        """A token sampled for the reply."""
        if self.lookup is not None:
            self.lookup.append(token)

    def adapt(self, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens was verified and its first ``accepted`` taken (the
        counters were kept as it went): the next draft's length, and the match it needs."""
        lookup = self.lookup
        if lookup is not None and self.by_lookup and lookup.fresh:
            if accepted == 0:
                lookup.ngram = min(lookup.ngram + 2, MAX_NGRAM)
            else:
                lookup.ngram = max(NGRAM, lookup.ngram - 1)
        if accepted == drafted:
            self.length = min(self.length * 2, MAX_DRAFT)
        else:
            self.length = max(MIN_DRAFT, accepted + 1)


class DraftSource(Protocol):
    """A draft model that guesses for several sequences at once (llama_draft.py)."""

    def draft(self, wants: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """For each (sequence id, its tokens, k): up to k guessed next tokens."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Want:
    """A generating sequence that may get a draft this step: its speculation, its sequence
    id, the tokens its draft follows (what the KV cache holds and the token fed now), and how
    many draft tokens it may take (its reply and context leave room for)."""

    spec: Speculation
    seq_id: int
    context: list[int]
    room: int


class Drafter:
    """Drafts for one scheduler: the lookup per request, and a shared draft model."""

    def __init__(self, mode: Mode, model: DraftSource | None = None, multiple: int = 1):
        self.mode = mode
        self.model = model
        self.multiple = multiple  # a step with drafts feeds a multiple of this many tokens

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def start(self, prompt: Sequence[int], limit: int) -> Speculation | None:
        """The speculation of a new request (None when speculation is off)."""
        if not self.on:
            return None
        return Speculation(Lookup(prompt, limit), draft_model=self.model is not None)

    def drafts(
        self, wants: list[Want], budget: int = MAX_STEP_DRAFTS, fed: int = 0
    ) -> list[list[int]]:
        """A draft per want (maybe empty), within ``budget`` tokens in all: lookups first,
        then the draft model for the sequences the lookup had nothing for. ``fed``: the
        tokens the step feeds besides the drafts (one per generating sequence)."""
        out: list[list[int]] = [[] for _ in wants]
        budget = min(budget, MAX_STEP_DRAFTS)
        asked: list[int] = []
        for i, w in enumerate(wants):
            k = min(w.spec.length, w.room, budget)
            if k <= 0:
                continue
            if w.spec.lookup is not None:
                out[i] = w.spec.lookup.propose(k, min(MAX_DRAFT, w.room, budget))
            w.spec.by_lookup = bool(out[i])
            if not out[i] and w.spec.draft_model:
                asked.append(i)
            budget -= len(out[i])
        if asked and self.model is not None:
            share = max(1, budget // len(asked))
            jobs = [
                (wants[i].seq_id, wants[i].context, min(wants[i].spec.length, share)) for i in asked
            ]
            jobs = [(s, c, min(k, wants[i].room)) for (s, c, k), i in zip(jobs, asked, strict=True)]
            for i, draft in zip(asked, self.model.draft(jobs), strict=True):
                out[i] = draft
                budget -= len(draft)
        if self.multiple > 1 and any(out):
            self._round(out, wants, fed, budget)
        return out

    def _round(self, out: list[list[int]], wants: list[Want], fed: int, left: int) -> None:
        """Make the step's tokens (``fed`` and the drafts) a multiple of ``self.multiple``:
        one lookup draft grows to it where its room and the ``left`` budget allow, or else the
        longest drafts give up the tokens past it (unless that leaves none: a draft model's
        first short draft stays as it is)."""
        over = (fed + sum(map(len, out))) % self.multiple
        if not over:
            return
        up = self.multiple - over
        if up <= left:
            for i, w in enumerate(wants):
                d = out[i]
                lookup = w.spec.lookup if w.spec.by_lookup else None
                if d and lookup is not None and len(d) + up <= min(MAX_DRAFT, w.room):
                    out[i] = lookup.lengthen(len(d) + up)
                    return
        if sum(map(len, out)) > over:  # never down to no draft at all
            for _ in range(over):
                max(out, key=len).pop()

    def close(self) -> None:
        if self.model is not None:
            self.model.close()


def parse_mode(value: Any) -> Mode:
    """``--speculative``'s value as a mode: off, ngram, or (a model name) draft."""
    text = str(value or "off").strip().lower()
    if text in ("off", "none", "no", "false", "0"):
        return "off"
    return "ngram" if text in ("ngram", "on", "auto") else "draft"
