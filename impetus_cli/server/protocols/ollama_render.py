"""Ollama's API: the runtime's stream -> NDJSON lines and whole replies, and errors.

A stream is one JSON object per line (``application/x-ndjson``): pieces of the reply with
``done: false``, then one last object with ``done: true``, ``done_reason`` and the counts and
durations (nanoseconds) Ollama reports. Tool calls arrive whole, arguments as objects, on the
line where the model finished writing them. A failure after the stream began is a line
``{"error": "..."}``; before it, the same object with the HTTP status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.summary import StreamSummary
from impetus_cli.runtime.types import GenerationChunk, ToolCall
from impetus_cli.server.errors import ApiError
from impetus_cli.server.http import dumps

TokenBytes = Callable[[int], bytes]
NDJSON = "application/x-ndjson"


def error_shape(error: ApiError) -> dict[str, Any]:
    """Ollama's error body: the message alone; the HTTP status says the kind."""
    return {"error": error.message}


def line(data: Any) -> bytes:
    return (dumps(data) + "\n").encode()


def timestamp(at: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes ``created_at`` and ``modified_at``."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass(frozen=True)
class Timing:
    """When the request arrived (``time.perf_counter``) and how long loading its model took."""

    started: float
    load_s: float = 0.0


def metrics(prompt_tokens: int, final: GenerationChunk | None, timing: Timing) -> dict[str, Any]:
    """The counts and durations of the last line. ``prompt_eval_count`` is the whole prompt
    (clients size their context with it), including the part served from the cache."""
    f = final or GenerationChunk()
    return {
        "total_duration": _ns(time.perf_counter() - timing.started),
        "load_duration": _ns(timing.load_s),
        "prompt_eval_count": f.prompt_tokens or prompt_tokens,  # a remote's: at the end
        "prompt_eval_duration": _ns(f.ttft_s),
        "eval_count": f.completion_tokens,
        "eval_duration": _ns(f.completion_tokens / f.generation_tps if f.generation_tps else 0),
    }


def done_reason(summary: StreamSummary) -> str:
    """Ollama's reasons are "stop" and "length"; a reply that called tools stopped."""
    return "length" if summary.finish_reason == "length" else "stop"


def tool_call_json(call: ToolCall, index: int) -> dict[str, Any]:
    """A whole call, its arguments as an object (Ollama's clients read a map)."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        arguments = {}  # the reply parser hands over JSON objects; this is only a guard
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}}


def _token(token: int, logprob: float, piece: TokenBytes) -> dict[str, Any]:
    raw = piece(token)
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def logprobs_json(chunks: Sequence[GenerationChunk], piece: TokenBytes) -> list[dict[str, Any]]:
    """One entry per generated token, with its most likely alternatives."""
    out = []
    for c in chunks:
        tops = c.top_logprobs or [()] * len(c.logprobs)
        for token, lp, top in zip(c.token_ids, c.logprobs, tops, strict=False):
            entry = _token(token, lp, piece)
            entry["top_logprobs"] = [_token(t, p, piece) for t, p in top]
            out.append(entry)
    return out


class _Reply:
    """What a chat reply and a generate reply share: one line per piece, a last line with
    the counts, one whole object when not streamed. Subclasses say where the text goes."""

    media_type = NDJSON

    def __init__(
        self, model: str, prompt_tokens: int, piece: TokenBytes, timing: Timing, *, logprobs: bool
    ):
        self.model, self.prompt_tokens, self.piece = model, prompt_tokens, piece
        self.timing, self.logprobs = timing, logprobs
        self.keep_chunks = logprobs
        self.calls_sent = 0

    def _fields(self, text: str, reasoning: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
        raise NotImplementedError

    def _object(self, fields: dict[str, Any], done: bool) -> dict[str, Any]:
        return {"model": self.model, "created_at": timestamp(), **fields, "done": done}

    def start(self) -> list[bytes]:
        return []

    def chunk(self, chunk: GenerationChunk) -> list[bytes]:
        if not (
            chunk.text or chunk.reasoning or chunk.tool_calls or (self.logprobs and chunk.logprobs)
        ):
            return []
        out = self._object(self._fields(chunk.text, chunk.reasoning, chunk.tool_calls), False)
        if self.logprobs and chunk.logprobs:
            out["logprobs"] = logprobs_json([chunk], self.piece)
        return [line(out)]

    def _last(self, fields: dict[str, Any], summary: StreamSummary) -> dict[str, Any]:
        out = self._object(fields, True)
        out["done_reason"] = done_reason(summary)
        out.update(metrics(self.prompt_tokens, summary.final, self.timing))
        return out

    def end(self, summary: StreamSummary) -> list[bytes]:
        return [line(self._last(self._fields("", "", ()), summary))]

    def error(self, exc: ImpetusError) -> list[bytes]:
        return [line({"error": exc.message})]

    def heartbeat(self) -> list[bytes]:
        return []  # NDJSON has no comment line; Ollama's clients parse every line they get

    def body(self, summary: StreamSummary) -> dict[str, Any]:
        self.calls_sent = 0
        fields = self._fields(summary.text, summary.reasoning, summary.tool_calls)
        out = self._last(fields, summary)
        if self.logprobs:
            out["logprobs"] = logprobs_json(summary.chunks, self.piece)
        return out


class ChatRenderer(_Reply):
    """/api/chat: the reply as ``message`` objects (content, thinking, tool_calls)."""

    def _fields(self, text: str, reasoning: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            message["thinking"] = reasoning
        if calls:
            first, self.calls_sent = self.calls_sent, self.calls_sent + len(calls)
            message["tool_calls"] = [tool_call_json(c, first + i) for i, c in enumerate(calls)]
        return {"message": message}


class GenerateRenderer(_Reply):
    """/api/generate: the reply as ``response`` text (and ``thinking``)."""

    def _fields(self, text: str, reasoning: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
        return {"response": text, "thinking": reasoning} if reasoning else {"response": text}


def load_reply(model: str, unloaded: bool, chat: bool) -> dict[str, Any]:
    """The answer to a request that only loads (or unloads) its model."""
    fields: dict[str, Any] = (
        {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    )
    return {
        "model": model,
        "created_at": timestamp(),
        **fields,
        "done_reason": "unload" if unloaded else "load",
        "done": True,
    }


def embed_reply(
    model: str, vectors: Sequence[Sequence[float]], tokens: int, timing: Timing
) -> dict[str, Any]:
    return {
        "model": model,
        "embeddings": [list(v) for v in vectors],
        "total_duration": _ns(time.perf_counter() - timing.started),
        "load_duration": _ns(timing.load_s),
        "prompt_eval_count": tokens,
    }


def keep_dimensions(vector: Sequence[float], dimensions: int | None) -> list[float]:
    """The first ``dimensions`` values, scaled back to unit length (as Ollama does)."""
    if dimensions is None or dimensions >= len(vector):
        return list(vector)
    head = list(vector[:dimensions])
    norm = sum(v * v for v in head) ** 0.5
    return [v / norm for v in head] if norm else head
