"""Generation: one running request, as an iterator of GenerationChunk.

It wraps the engine's stream, separates tool calls from text when the request carried tools,
counts tokens for the metrics, and gives the slot back to the manager exactly once: at the end
of the stream, on an error, or when the consumer closes it (a client that hung up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from impetus_cli.runtime.metrics import Event
from impetus_cli.runtime.types import GenerationChunk, SamplingParams

if TYPE_CHECKING:
    from impetus_cli.runtime.manager import Loaded, ModelManager


class Generation:
    def __init__(
        self,
        manager: ModelManager,
        entry: Loaded,
        tokens: list[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        tool_style: str | None,
    ):
        self.manager, self.entry = manager, entry
        self.model = entry.model
        self.prompt_tokens = len(tokens)
        self.n_ctx = entry.engine.n_ctx
        self.max_tokens = sampling.max_tokens or 0
        self.cancel = cancel
        self._stream: Generator[GenerationChunk, None, None] = entry.engine.generate(
            tokens, sampling, cancel
        )  # type: ignore[assignment]
        self._iter = self._run(tool_style)
        self._released = False

    def __iter__(self) -> Iterator[GenerationChunk]:
        return self

    def __next__(self) -> GenerationChunk:
        return next(self._iter)

    def _run(self, tool_style: str | None) -> Generator[GenerationChunk, None, None]:
        from impetus_cli.runtime.templates import ToolCallStream

        tools = ToolCallStream(tool_style) if tool_style else None
        name, metrics = self.model.name, self.manager.metrics
        status: int | str = "error"
        final: GenerationChunk | None = None
        held = GenerationChunk()  # tokens (and logprobs) whose text the tool parser holds back
        try:
            for chunk in self._stream:
                if chunk.token_ids:
                    metrics.count_tokens(name, len(chunk.token_ids))
                if chunk.finish_reason is not None:
                    final = chunk
                    break
                if tools is None:
                    yield chunk
                    continue
                chunk = _join_tokens(held, chunk)
                text, calls = tools.feed(chunk.text)
                if text or calls:
                    yield replace(chunk, text=text, tool_calls=tuple(calls))
                    held = GenerationChunk()
                else:
                    held = chunk
            if final is None:
                return
            if tools is not None:
                final = _join_tokens(held, final)
                text, calls = tools.feed(final.text)
                rest, more = tools.finish()
                reason = (
                    "tool_calls"
                    if tools.calls and final.finish_reason != "cancelled"
                    else final.finish_reason
                )
                final = replace(
                    final, text=text + rest, tool_calls=tuple(calls + more), finish_reason=reason
                )  # type: ignore[arg-type]
            status = 200 if final.finish_reason != "cancelled" else "cancelled"
            yield final
        finally:
            self._finish(final, status)

    def _finish(self, final: GenerationChunk | None, status: int | str) -> None:
        if self._released:
            return
        self._released = True
        self._stream.close()  # ends the engine's generator (and frees its lock) if we stopped early
        self.manager.release(self.entry)
        f = final or GenerationChunk()
        self.manager.metrics.finish(
            self.model.name,
            self.prompt_tokens,
            f.completion_tokens,
            f.cached_tokens,
            f.ttft_s,
            f.generation_tps,
            status,
        )
        self.manager.bus.publish(
            Event(
                "request_finished",
                self.model.name,
                {
                    "prompt_tokens": self.prompt_tokens,
                    "cached_tokens": f.cached_tokens,
                    "completion_tokens": f.completion_tokens,
                    "ttft_s": f.ttft_s,
                    "tps": f.generation_tps,
                    "finish_reason": f.finish_reason,
                    "status": status,
                    "at": time.time(),
                },
            )
        )

    def close(self) -> None:
        """Stop early (client gone): cancel the engine, then release the slot."""
        if not self._released:
            self.cancel.set()
        self._iter.close()
        if not self._released:  # the iterator never started: its finally did not run
            self._finish(None, "cancelled")


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
