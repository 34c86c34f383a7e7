"""The protocol every backend implements, and the factory that picks one by format."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
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

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Text to token ids; ``special`` parses control tokens in the text (templates need it)."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """Messages (+ tools) to the prompt text, through the model's chat template."""
        ...

    def generate(
        self,
        tokens: Sequence[int],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationChunk]:
        """Evaluate the prompt (reusing a cached prefix) and stream the completion."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def close(self) -> None: ...
