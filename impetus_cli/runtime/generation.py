"""Generation: one running request, as an iterator of GenerationChunk.

It wraps the engine's stream: the reply parser (runtime/replies) sorts the text into content,
reasoning and tool calls,
stops a reply that loops (the runaway guard), counts tokens, and calls ``on_end`` exactly once
with the final chunk: at the end of the stream, on an error, or when the consumer closes it (a
client that hung up). ``on_end`` is how the slot goes back; Generation knows nothing of the
manager.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace

from impetus_cli.runtime.loop_guard import LoopGuard
from impetus_cli.runtime.replies import ReplyDelta, ReplyParser
from impetus_cli.runtime.types import GenerationChunk

log = logging.getLogger("impetus.generation")


@dataclass(frozen=True)
class Outcome:
    """How a generation ended, for the slot's owner: the final chunk (None if it never
    started), ``status`` (200, "cancelled" or "error") and why a reply was cut short by us."""

    final: GenerationChunk | None
    status: int | str
    stopped_by: str | None = None  # "loop" when the runaway guard ended it


class Generation:
    def __init__(
        self,
        stream: Iterator[GenerationChunk],
        *,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        cancel: threading.Event,
        on_end: Callable[[Outcome], None],
        on_tokens: Callable[[int], None] = lambda _: None,
        parser: ReplyParser | None = None,
        guard: LoopGuard | None = None,
        token_bytes: Callable[[int], bytes] = lambda _: b"",
    ):
        self.model = model
        self.token_bytes = token_bytes  # a token id's text as bytes (for logprobs)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.cancel = cancel
        self.stopped_by: str | None = None
        self._stream = stream
        self._on_end = on_end
        self._on_tokens = on_tokens
        self._guard = guard
        self._iter = self._run(parser)
        self._ended = False

    def __iter__(self) -> Iterator[GenerationChunk]:
        return self

    def __next__(self) -> GenerationChunk:
        return next(self._iter)

    def _run(self, parser: ReplyParser | None) -> Generator[GenerationChunk, None, None]:
        status: int | str = "error"
        final: GenerationChunk | None = None
        held = GenerationChunk()  # tokens (and logprobs) whose text the parser holds back
        try:
            for chunk in self._stream:
                if chunk.token_ids:
                    self._on_tokens(len(chunk.token_ids))
                    self._watch(chunk)
                if chunk.finish_reason is not None:
                    final = self._ended_by_guard(chunk)
                    break
                if parser is None:
                    yield chunk
                    continue
                chunk = _join_tokens(held, chunk)
                parsed = parser.feed(chunk.text)
                if parsed.content or parsed.reasoning or parsed.tool_call_deltas:
                    yield _parsed(chunk, parsed)
                    held = GenerationChunk()
                else:
                    held = chunk
            if final is None:
                return
            if parser is not None:
                final = _join_tokens(held, final)
                parsed = parser.feed(final.text) + parser.finish(final.finish_reason or "stop")
                final = _parsed(final, parsed)
                if parser.calls and final.finish_reason == "stop":
                    final = replace(final, finish_reason="tool_calls")
            status = 200 if final.finish_reason != "cancelled" else "cancelled"
            yield final
        finally:
            self._end(final, status)

    def _watch(self, chunk: GenerationChunk) -> None:
        """Feed the runaway guard; when it trips, stop the engine at its next step."""
        if self._guard is None or self.stopped_by is not None:
            return
        reason = self._guard.feed(chunk.token_ids)
        if reason is not None:
            self.stopped_by = "loop"
            self.cancel.set()
            log.warning("%s: reply stopped by the loop guard: %s", self.model, reason)

    def _ended_by_guard(self, final: GenerationChunk) -> GenerationChunk:
        """A reply the guard stopped ends as one cut at a length limit, as OpenAI reports it."""
        if self.stopped_by == "loop" and final.finish_reason == "cancelled":
            return replace(final, finish_reason="length", stopped_by="loop")
        return final

    def _end(self, final: GenerationChunk | None, status: int | str) -> None:
        if self._ended:
            return
        self._ended = True
        if isinstance(self._stream, Generator):
            self._stream.close()  # ends the engine's stream (frees its slot) if we stopped early
        self._on_end(Outcome(final, status, self.stopped_by))

    def close(self) -> None:
        """Stop early (client gone): cancel the engine, then release the slot."""
        if not self._ended:
            self.cancel.set()
        self._iter.close()
        if not self._ended:  # the iterator never started: its finally did not run
            self._end(None, "cancelled")


def _parsed(chunk: GenerationChunk, parsed: ReplyDelta) -> GenerationChunk:
    """``chunk`` carrying what the reply parser made of its text."""
    return replace(
        chunk,
        text=parsed.content,
        reasoning=parsed.reasoning,
        tool_calls=parsed.tool_calls,
        tool_call_deltas=parsed.tool_call_deltas,
    )


def _join_tokens(held: GenerationChunk, chunk: GenerationChunk) -> GenerationChunk:
    """``chunk`` with the token ids and logprobs of ``held`` in front: each token's logprobs
    stay with it, and reach the client with the chunk that finally carries its text."""
    if not held.token_ids:
        return chunk
    return replace(
        chunk,
        token_ids=held.token_ids + chunk.token_ids,
        logprobs=held.logprobs + chunk.logprobs,
        top_logprobs=held.top_logprobs + chunk.top_logprobs,
    )
