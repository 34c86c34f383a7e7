"""One reply, summed up from its stream of GenerationChunk: what a whole (non-streamed) answer,
`impetus chat`'s status line and the agent benchmark need, computed in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from impetus_cli.runtime.types import GenerationChunk, ToolCall


@dataclass
class StreamSummary:
    """Add every chunk of one reply; read the whole text, calls and final counters."""

    keep_chunks: bool = False  # keep every chunk (their logprobs), not only the sums
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    chunks: list[GenerationChunk] = field(default_factory=list)
    final: GenerationChunk | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.text += chunk.text
        self.reasoning += chunk.reasoning
        self.tool_calls += chunk.tool_calls
        if self.keep_chunks:
            self.chunks.append(chunk)
        if chunk.finish_reason is not None:
            self.final = chunk

    @property
    def finish_reason(self) -> str:
        """stop, length or tool_calls; a cancelled reply (nobody is left to read it) or one
        that never finished reads as a stop."""
        reason = self.final.finish_reason if self.final else None
        return reason if reason in ("stop", "length", "tool_calls") else "stop"

    @property
    def cancelled(self) -> bool:
        return self.final is not None and self.final.finish_reason == "cancelled"

    @property
    def completion_tokens(self) -> int:
        return self.final.completion_tokens if self.final else 0

    @property
    def cached_tokens(self) -> int:
        return self.final.cached_tokens if self.final else 0


def decode_rate(completion_tokens: int, first_token_s: float, last_token_s: float) -> float:
    """Tokens per second from the first token to the last, as a client measures a stream: the
    first token belongs to the prompt's evaluation, so it is not counted."""
    span = last_token_s - first_token_s
    return (completion_tokens - 1) / span if span > 0 and completion_tokens > 1 else 0.0
