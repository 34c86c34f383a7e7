"""An upstream's reply -> GenerationChunk, as it arrives.

``EventDecoder`` turns the lines of a server-sent event stream into parsed events; ``Reader``
turns each ``chat.completion.chunk`` (or ``text_completion``) event into the runtime's chunks:
text, reasoning (``reasoning_content`` or ``reasoning``), tool-call deltas, and each call whole
once the next one begins or the reply ends; then one final chunk with the finish reason and
the counters (usage, cached tokens, llama-server's ``timings`` when the upstream sends them).
A whole (non-streamed) ``chat.completion`` body is read the same way, as one event.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from impetus_cli.runtime.remote.errors import UpstreamError
from impetus_cli.runtime.summary import decode_rate
from impetus_cli.runtime.types import FinishReason, GenerationChunk, ToolCall, ToolCallDelta

DONE = object()  # the ``data: [DONE]`` event
FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}
MAX_EVENT = 16 * 1024 * 1024  # one event's data, at most (a stream is not a place for more)


class EventDecoder:
    """Lines of ``text/event-stream`` -> parsed ``data`` values (``DONE`` for ``[DONE]``).

    A data line that is JSON by itself is an event at once, without waiting for the blank
    line (every OpenAI-compatible server sends one line per event); several data lines of
    one event are joined as the SSE standard says. Comments (``: ping``) and other fields
    are skipped."""

    def __init__(self, name: str):
        self.name = name
        self._data: list[str] = []
        self._size = 0

    def feed(self, raw: bytes) -> list[Any]:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return []
        key, _, value = line.partition(":")
        if key != "data":
            return []
        value = value.removeprefix(" ")
        if not self._data:
            parsed = _parse(value)
            if parsed is not None:
                return [parsed]
        self._data.append(value)
        self._size += len(value)
        if self._size > MAX_EVENT:
            raise UpstreamError(f"The remote {self.name} sent an event larger than allowed.")
        return []

    def _dispatch(self) -> list[Any]:
        if not self._data:
            return []
        text = "\n".join(self._data)
        self._data, self._size = [], 0
        parsed = _parse(text)
        if parsed is None:
            raise UpstreamError(f"The remote {self.name} sent an event that is not JSON.")
        return [parsed]

    def finish(self) -> list[Any]:
        """At the end of the stream: an event still waiting for its blank line."""
        return self._dispatch()


def _parse(text: str) -> Any:
    if text.strip() == "[DONE]":
        return DONE
    try:
        return json.loads(text)
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _num(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else 0.0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass
class _Call:
    """One tool call being streamed: our index, id, name and arguments so far."""

    index: int
    id: str
    name: str
    arguments: str = ""

    def whole(self) -> ToolCall:
        return ToolCall(self.id, self.name, self.arguments or "{}")


@dataclass
class Reader:
    """One reply's events -> chunks. ``kind`` "chat" reads ``delta`` (or ``message``),
    "completion" reads ``text``. ``started``: when the request was sent (perf_counter)."""

    name: str
    kind: Literal["chat", "completion"] = "chat"
    started: float = field(default_factory=time.perf_counter)
    clock: Callable[[], float] = time.perf_counter
    outputs: int = 0  # events that carried output (about one token each)
    finish: FinishReason | None = None
    usage: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, Any] = field(default_factory=dict)
    _calls: dict[Any, _Call] = field(default_factory=dict)  # the open call per upstream index
    _count: int = 0  # calls so far
    _open: _Call | None = None
    _first: float = 0.0
    _last: float = 0.0

    def feed(self, event: Any) -> list[GenerationChunk]:
        if not isinstance(event, Mapping):
            raise UpstreamError(f"The remote {self.name} sent an event that is not an object.")
        if event.get("error") and not event.get("choices"):
            error = event["error"]
            message = error.get("message") if isinstance(error, Mapping) else error
            raise UpstreamError(f"The remote {self.name} failed during the reply: {message}")
        if isinstance(event.get("usage"), Mapping):
            self.usage = event["usage"]
        if isinstance(event.get("timings"), Mapping):
            self.timings = event["timings"]
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return []
        choice = choices[0]
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.finish = FINISH.get(reason, "stop")
        return self._output(choice)

    def _output(self, choice: Mapping[str, Any]) -> list[GenerationChunk]:
        raw_calls: Any = []
        if self.kind == "completion":
            text, reasoning = _text(choice.get("text")), ""
        else:
            delta = choice.get("delta") or choice.get("message") or {}
            delta = delta if isinstance(delta, Mapping) else {}
            text = _text(delta.get("content"))
            reasoning = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
            raw_calls = delta.get("tool_calls") or []
        out: list[GenerationChunk] = []
        deltas: list[ToolCallDelta] = []
        for position, raw in enumerate(raw_calls if isinstance(raw_calls, list) else []):
            if isinstance(raw, Mapping):
                done, delta_ = self._call_delta(raw, position)
                out += [GenerationChunk(tool_calls=(done,))] if done else []
                deltas += [delta_] if delta_ else []
        if text or reasoning or deltas:
            now = self.clock()
            self._first = self._first or now
            self._last = now
            self.outputs += 1
            out.append(
                GenerationChunk(text=text, reasoning=reasoning, tool_call_deltas=tuple(deltas))
            )
        return out

    def _call_delta(
        self, raw: Mapping[str, Any], position: int
    ) -> tuple[ToolCall | None, ToolCallDelta | None]:
        """A piece of a call -> (the previous call, now complete, if this piece starts a new
        one; the piece as our delta). A piece starts a call when its index is new, or when it
        brings another id under the same index (lmdeploy and SGLang number every call 0);
        vLLM's later pieces carry an empty id. Only a call's first piece carries its id and
        name here."""
        key = raw.get("index", position)
        fn: Mapping[str, Any] = raw["function"] if isinstance(raw.get("function"), Mapping) else {}
        args = fn.get("arguments")
        args = args if isinstance(args, str) else (json.dumps(args) if args is not None else "")
        call, new_id = self._calls.get(key), _text(raw.get("id"))
        if call is not None and (not new_id or new_id == call.id):
            if not call.name and _text(fn.get("name")):
                call.name = fn["name"]
            call.arguments += args
            return None, ToolCallDelta(call.index, arguments=args) if args else None
        done = self._open.whole() if self._open is not None else None
        call = _Call(self._count, new_id or f"call_{uuid.uuid4().hex[:24]}", _text(fn.get("name")))
        call.arguments = args
        self._count += 1
        self._calls[key] = self._open = call
        return done, ToolCallDelta(call.index, id=call.id, name=call.name, arguments=args)

    @property
    def calls(self) -> int:
        return self._count

    def final(self, cancelled: bool = False) -> GenerationChunk:
        """The last chunk: why it ended, the last call whole, and the counters."""
        finish: FinishReason = "cancelled" if cancelled else self.finish or "stop"
        if finish == "stop" and self._count:
            finish = "tool_calls"
        now = self.clock()
        prompt = _int(self.usage.get("prompt_tokens"))
        completion = _int(self.usage.get("completion_tokens")) or self.outputs
        details = self.usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        cached = min(prompt, cached or _int(self.timings.get("cache_n")))
        ttft = (self._first or now) - self.started
        first, last = self._first or now, self._last or now
        prompt_tps = _num(self.timings.get("prompt_per_second"))
        return GenerationChunk(
            finish_reason=finish,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            prompt_tps=prompt_tps or ((prompt - cached) / ttft if ttft > 0 else 0.0),
            generation_tps=_num(self.timings.get("predicted_per_second"))
            or decode_rate(completion, first, last),
            ttft_s=ttft,
            tool_calls=(self._open.whole(),) if self._open is not None else (),
        )
