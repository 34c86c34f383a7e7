"""The protocol every backend implements, and the reader of a scheduler thread's stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    SpecialText,
    ToolSpec,
)


@runtime_checkable
class Engine(Protocol):
    """A loaded model. Thread-safety: ``generate`` may be called from several threads; an
    engine serialises what its backend cannot share (or batches it)."""

    info: ModelInfo
    plan: LoadPlan

    @property
    def n_ctx(self) -> int:
        """Context size per sequence, as loaded."""
        ...

    @property
    def memory_bytes(self) -> int:
        """Resident bytes of weights + KV cache + buffers, as the backend reports them."""
        ...

    @property
    def special_text(self) -> SpecialText:
        """The text of the special tokens prompts are built with (BOS, EOS, fill-in-the-middle);
        "" for those the model does not have."""
        ...

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template the model ships (GGUF metadata, or the tokenizer's or the
        files' on MLX); None when it has none and a built-in one must stand in."""
        ...

    @property
    def saves_instructions(self) -> bool:
        """Whether ``generate`` uses its ``instructions`` mark (it saves a prompt's state where
        the instructions end); when not, prepare_chat does not look for them."""
        ...

    @property
    def failure(self) -> str | None:
        """The last failure of the generation loop (message and time), for /health; None once
        a later request completes, or when there was none."""
        ...

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Text to token ids; ``special`` parses control tokens in the text (templates need it)."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def token_bytes(self, token: int) -> bytes:
        """One token's text as bytes, for logprobs (a byte token is a piece of a character)."""
        ...

    # Kept for compatibility until its callers render with chat_template and special_text.
    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """Messages (+ tools) to the prompt text, through the model's chat template."""
        ...

    def generate(
        self,
        tokens: Sequence[int],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        instructions: int = 0,
    ) -> Iterator[GenerationChunk]:
        """Evaluate the prompt (reusing a cached prefix) and stream the completion: text chunks,
        then one final chunk with the finish reason and counters. The reply's length comes
        from limits.reply_budget; a prompt that leaves no room is refused before streaming.
        The prompt's first ``instructions`` tokens are what other sessions of the same agent
        share (prepare.instructions_end): an engine that ``saves_instructions`` keeps its
        state there for them."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def close(self) -> None: ...


def relay(
    out: queue.SimpleQueue[GenerationChunk | BaseException],
    cancel: threading.Event,
    abandon: Callable[[], None],
) -> Iterator[GenerationChunk]:
    """Stream what a scheduler thread sends for one request, until its final chunk.

    The scheduler may run a step or two ahead of the reader. Once ``cancel`` is set, what it
    produced after that is neither delivered nor counted, so a cancelled stream ends within
    one token of what the reader saw. ``abandon`` runs when the reader stops early (a client
    that hung up), so the scheduler drops the request at its next step.
    """
    delivered, dropped = 0, False
    try:
        while True:
            item = out.get()
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is None:
                if cancel.is_set():
                    dropped = True
                    continue
                delivered += len(item.token_ids)
                yield item
                continue
            if dropped or item.finish_reason == "cancelled":
                item = replace(
                    item,
                    text="",
                    token_ids=(),
                    logprobs=(),
                    top_logprobs=(),
                    finish_reason="cancelled",
                    completion_tokens=delivered,
                )
            yield item
            return
    finally:
        abandon()
