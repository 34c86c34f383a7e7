"""Anthropic Messages: the runtime's stream -> a ``message`` body or its SSE events, and
errors in Anthropic's shape.

A stream is ``event: NAME`` + ``data: JSON`` pairs: ``message_start``; per content block
(``thinking``, ``text``, ``tool_use``, in the order the model wrote them)
``content_block_start``, its deltas (``thinking_delta``, ``text_delta``,
``input_json_delta``) and ``content_block_stop``; then ``message_delta`` with the
``stop_reason`` and usage, and ``message_stop``. ``ping`` keeps the stream alive while a long
prompt is evaluated; a failure after the stream began is an ``error`` event.

Usage follows Anthropic's arithmetic: ``input_tokens`` are the prompt tokens evaluated for
this request, ``cache_read_input_tokens`` those reused from the cache; their sum is the prompt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.stops import END_OF_TURN
from impetus_cli.runtime.summary import StreamSummary
from impetus_cli.runtime.types import GenerationChunk, ToolCall, ToolCallDelta
from impetus_cli.server.errors import ApiError
from impetus_cli.server.http import dumps

TokenBytes = Callable[[int], bytes]
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
# Anthropic's error types by HTTP status; 529 is its "overloaded".
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


def anthropic_shape(e: ApiError) -> dict[str, Any]:
    """The error middleware's body for every failure under /v1/messages. The field at fault
    leads the message, as Anthropic writes it ("messages[0].content: ...")."""
    named = e.param is None or e.message.startswith(f"'{e.param}'")
    return error_body(e.status, e.message if named else f"{e.param}: {e.message}")


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()


def usage(prompt: int, final: GenerationChunk | None) -> dict[str, int]:
    """Anthropic's arithmetic: input_tokens are the evaluated ones, the reused ones are a cache
    read. The final chunk's prompt count wins (a remote model's arrives only there)."""
    f = final or GenerationChunk()
    prompt = f.prompt_tokens or prompt
    cached = min(f.cached_tokens, prompt)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": f.completion_tokens,
    }


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the ``input`` object (the reply parser checked them as JSON)."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class StopSeen:
    """Which of the client's ``stop_sequences`` ended a reply. The runtime reports a stop
    string and an end-of-turn token alike as finish_reason "stop"; the reply's own tokens
    say which: the engine cut at the first stop string in them, so if that is one of the
    client's, it ended the reply."""

    def __init__(self, stops: Sequence[str], piece: TokenBytes):
        self.stops = tuple(s for s in stops if s)
        self.piece = piece
        self.tokens: list[int] = []

    def add(self, chunk: GenerationChunk) -> None:
        if self.stops:
            self.tokens.extend(chunk.token_ids)

    def matched(self) -> str | None:
        if not self.stops:
            return None
        text = b"".join(self.piece(t) for t in self.tokens).decode("utf-8", "replace")
        found = [(text.find(s), s) for s in (*self.stops, *END_OF_TURN) if s in text]
        if not found:
            return None
        first = min(found, key=lambda f: f[0])[1]
        return first if first in self.stops else None


class MessageRenderer:
    """One assistant message, whole or as the Messages API's event stream."""

    media_type = "text/event-stream"

    def __init__(
        self,
        model: str,
        prompt_tokens: int,
        piece: TokenBytes,
        *,
        stops: Sequence[str] = (),
        one_call: bool = False,
    ):
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model, self.prompt_tokens = model, prompt_tokens
        self.stop_seen = StopSeen(stops, piece)
        self.keep_chunks = bool(self.stop_seen.stops)  # body() reads their tokens
        self.one_call = one_call
        self.index = -1  # the open content block's index; -1 before the first
        self.open: str | None = None  # its type: "thinking", "text" or "tool_use"
        self.call: int | None = None  # the runtime's index of the call in the open block

    def _message(self, content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage(self.prompt_tokens, None),
        }

    def start(self) -> list[bytes]:
        return [
            event("message_start", {"type": "message_start", "message": self._message([], None)})
        ]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open, self.call = None, None
        return [event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _begin(self, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.open = block["type"]
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return [*out, event("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return event("content_block_delta", data)

    def chunk(self, chunk: GenerationChunk) -> list[bytes]:
        self.stop_seen.add(chunk)
        out: list[bytes] = []
        if chunk.reasoning:
            if self.open != "thinking":
                out += self._begin({"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": chunk.reasoning}))
        if chunk.text:
            if self.open != "text":
                out += self._begin({"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": chunk.text}))
        for d in chunk.tool_call_deltas:
            out += self._tool_delta(d)
        return out

    def _tool_delta(self, d: ToolCallDelta) -> list[bytes]:
        if self.one_call and d.index > 0:
            return []  # disable_parallel_tool_use: the first call only
        out: list[bytes] = []
        if d.id is not None:
            block = {"type": "tool_use", "id": d.id, "name": d.name or "", "input": {}}
            out += self._begin(block)
            self.call = d.index
        if d.arguments and self.open == "tool_use" and self.call == d.index:
            out.append(self._delta({"type": "input_json_delta", "partial_json": d.arguments}))
        return out

    def _stop(self, summary: StreamSummary) -> tuple[str, str | None]:
        """stop_reason and stop_sequence."""
        reason = STOP_REASONS[summary.finish_reason]
        if reason != "end_turn":
            return reason, None
        seen = self.stop_seen.matched()
        return ("stop_sequence", seen) if seen is not None else (reason, None)

    def end(self, summary: StreamSummary) -> list[bytes]:
        reason, sequence = self._stop(summary)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(self.prompt_tokens, summary.final),
        }
        return [
            *self._close(),
            event("message_delta", delta),
            event("message_stop", {"type": "message_stop"}),
        ]

    def error(self, exc: ImpetusError) -> list[bytes]:
        return [event("error", error_body(exc.status, ApiError.of(exc).message))]

    def heartbeat(self) -> list[bytes]:
        return [event("ping", {"type": "ping"})]

    def body(self, summary: StreamSummary) -> dict[str, Any]:
        for chunk in summary.chunks:  # kept when stop sequences are to be told apart
            self.stop_seen.add(chunk)
        content: list[dict[str, Any]] = []
        if summary.reasoning:
            content.append({"type": "thinking", "thinking": summary.reasoning, "signature": ""})
        if summary.text:
            content.append({"type": "text", "text": summary.text})
        calls = summary.tool_calls[:1] if self.one_call else summary.tool_calls
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(c)} for c in calls
        ]
        reason, sequence = self._stop(summary)
        message = self._message(content, reason)
        message["stop_sequence"] = sequence
        message["usage"] = usage(self.prompt_tokens, summary.final)
        return message
