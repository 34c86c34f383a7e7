"""The runaway guard: notices a reply that has started to loop, so the server ends it.

A base model, or an instruct model that lost its way, can repeat itself until the context is
full: minutes of tokens no one will read, holding a slot. Two signs, checked per token on the
reply's token ids (not the prompt's, so an edit that copies its input is not a loop):

- the end of the reply is one span repeated: ``repeats`` or more times, over at least
  ``min_span`` tokens (a long run of short repeats such as a zero-filled array of a few dozen
  entries stays below it);
- nothing new for a long time: every ``ngram``-token sequence of the last ``window`` tokens has
  already appeared earlier in the reply (a loop whose period is too long for the first check).

Both thresholds are far from what normal code and prose do (tests/test_loop_guard.py feeds real
source files and documents through it); ``--no-loop-guard`` turns it off.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class LoopGuardConfig:
    repeats: int = 4  # a span seen this many times in a row at the end ...
    min_span: int = 256  # ... covering at least this many tokens
    max_period: int = 512  # the longest span the first check looks for
    window: int = 1024  # the second check: this many tokens ...
    ngram: int = 16  # ... without one ngram that the reply had not produced before


class LoopGuard:
    """Feed it the reply's tokens in order; ``tripped`` says why it looks like a loop."""

    def __init__(self, config: LoopGuardConfig | None = None):
        self.config = c = config or LoopGuardConfig()
        self.n = 0
        # Where each token occurred within the last max_period positions, and for each period p
        # the run of tokens equal to the one p before them: p -> (index it ended at, length).
        self._where: dict[int, collections.deque[int]] = {}
        self._runs: dict[int, tuple[int, int]] = {}
        self._recent: collections.deque[int] = collections.deque(maxlen=c.ngram)
        self._seen: set[tuple[int, ...]] = set()
        self._novel: collections.deque[bool] = collections.deque(maxlen=c.window)
        self._novel_count = 0
        self.tripped: str | None = None

    def feed(self, tokens: tuple[int, ...] | list[int]) -> str | None:
        """Add tokens; returns the reason once the reply looks like a loop (and keeps it)."""
        for token in tokens:
            if self.tripped is None:
                self._periodic(token)
                self._novelty(token)
                self.n += 1
        return self.tripped

    def _periodic(self, token: int) -> None:
        """Extend the run of every period at which this token repeats an earlier one."""
        c, i = self.config, self.n
        where = self._where.setdefault(token, collections.deque())
        while where and i - where[0] > c.max_period:
            where.popleft()
        for j in where:
            p = i - j
            end, length = self._runs.get(p, (-2, 0))
            length = length + 1 if end == i - 1 else 1
            self._runs[p] = (i, length)
            # the last length + p tokens are one span of p tokens repeated
            if length + p >= c.min_span and length >= (c.repeats - 1) * p:
                self.tripped = f"the last {length + p} tokens repeat a {p}-token span"
        where.append(i)

    def _novelty(self, token: int) -> None:
        c = self.config
        self._recent.append(token)
        if len(self._recent) < c.ngram:
            return
        gram = tuple(self._recent)
        novel = gram not in self._seen
        self._seen.add(gram)
        if len(self._novel) == c.window and self._novel[0]:
            self._novel_count -= 1
        self._novel.append(novel)
        self._novel_count += novel
        if len(self._novel) == c.window and self._novel_count == 0:
            self.tripped = f"no new {c.ngram}-token sequence in the last {c.window} tokens"
