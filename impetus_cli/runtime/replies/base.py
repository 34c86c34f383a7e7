"""The streaming machinery every dialect shares.

A dialect parser reads model text piece by piece and sorts it into content and tool calls. It
lets text through as soon as it cannot be the start of a marker, holds back only what could
be, and never raises on model output: text that turns out not to be a call comes back as
content. A call streams as deltas: first its id and name, then its arguments one complete
top-level member at a time (``{"a": 1`` then ``, "b": 2`` then ``}``), so the fragments always
concatenate to the call's final ``arguments`` and every prefix of them was checked JSON.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.runtime.stops import partial_suffix
from impetus_cli.runtime.types import ToolCall, ToolCallDelta, ToolSpec


@dataclass(frozen=True)
class ReplyDelta:
    """What one piece of model text turned into."""

    content: str = ""
    reasoning: str = ""
    tool_call_deltas: tuple[ToolCallDelta, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # the calls that completed in this piece

    def __add__(self, other: ReplyDelta) -> ReplyDelta:
        return ReplyDelta(
            self.content + other.content,
            self.reasoning + other.reasoning,
            self.tool_call_deltas + other.tool_call_deltas,
            self.tool_calls + other.tool_calls,
        )


@dataclass
class Acc:
    """What a parser produced during one ``feed`` or ``finish``."""

    content: list[str] = field(default_factory=list)
    deltas: list[ToolCallDelta] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)

    def delta(self) -> ReplyDelta:
        return ReplyDelta("".join(self.content), "", _joined(self.deltas), tuple(self.calls))


def _joined(deltas: list[ToolCallDelta]) -> tuple[ToolCallDelta, ...]:
    """Argument fragments of one call that arrived in the same piece, as one fragment."""
    out: list[ToolCallDelta] = []
    for d in deltas:
        prev = out[-1] if out else None
        if prev and d.id is None and prev.id is None and prev.index == d.index:
            out[-1] = ToolCallDelta(d.index, arguments=prev.arguments + d.arguments)
        else:
            out.append(d)
    return tuple(out)


def new_call_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


class CallBuilder:
    """One call while it streams: its deltas, then the complete ToolCall."""

    def __init__(self, index: int, name: str):
        self.index, self.id, self.name = index, new_call_id(), name
        self.args = ""

    def start(self, acc: Acc) -> None:
        acc.deltas.append(ToolCallDelta(self.index, self.id, self.name, ""))

    def member(self, acc: Acc, key: str, value: Any) -> None:
        piece = ("{" if not self.args else ", ") + _dump(key) + ": " + _dump(value)
        self.args += piece
        acc.deltas.append(ToolCallDelta(self.index, arguments=piece))

    def close(self, acc: Acc) -> ToolCall:
        piece = "}" if self.args else "{}"
        self.args += piece
        acc.deltas.append(ToolCallDelta(self.index, arguments=piece))
        call = ToolCall(self.id, self.name, self.args)
        acc.calls.append(call)
        return call


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class JsonScanner:
    """Scans the raw text of one JSON value as it arrives. For an object it reports each
    top-level member when it completes; ``done`` when the value closes, ``error`` when the
    text cannot be JSON. Members are checked with ``json.loads``."""

    def __init__(self) -> None:
        self.text = ""
        self.i = 0  # next character to scan
        self.depth = 0
        self.in_str = self.escape = False
        self.member_start = 0
        self.kind = ""  # "{" or "[" once the value started
        self.done = self.error = False
        self.end = 0  # index just past the value, once done

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self.text += text
        members: list[tuple[str, Any]] = []
        while self.i < len(self.text) and not (self.done or self.error):
            self._char(self.text[self.i], members)
            self.i += 1
        return members

    def _char(self, ch: str, members: list[tuple[str, Any]]) -> None:
        if self.in_str:
            if self.escape:
                self.escape = False
            elif ch == "\\":
                self.escape = True
            elif ch == '"':
                self.in_str = False
        elif not self.kind:
            if ch in "{[":
                self.kind, self.depth, self.member_start = ch, 1, self.i + 1
            elif not ch.isspace():
                self.error = True
        elif ch == '"':
            self.in_str = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
            if self.depth == 0:
                self._member(members, last=True)
                self.done, self.end = not self.error, self.i + 1
        elif ch == "," and self.depth == 1:
            self._member(members, last=False)

    def _member(self, members: list[tuple[str, Any]], *, last: bool) -> None:
        raw = self.text[self.member_start : self.i]
        self.member_start = self.i + 1
        if self.kind == "[":
            return
        if not raw.strip():
            self.error = not last  # "{}" is fine; "{,"  is not
            return
        try:
            obj = json.loads("{" + raw + "}")
        except ValueError:
            self.error = True
            return
        members.extend(obj.items())

    @property
    def rest(self) -> str:
        """The text after the value (once done)."""
        return self.text[self.end :] if self.done else ""

    def value(self) -> Any:
        """The whole value, parsed (once done); None if it does not parse."""
        try:
            return json.loads(self.text[: self.end])
        except ValueError:
            return None


def find_first(buf: str, markers: Sequence[str]) -> tuple[int, str]:
    """The earliest marker in ``buf`` and where it starts: (-1, "") if none."""
    best, which = -1, ""
    for m in markers:
        i = buf.find(m)
        if i >= 0 and (best < 0 or i < best):
            best, which = i, m
    return best, which


def held_length(buf: str, markers: Sequence[str]) -> int:
    """How much of the end of ``buf`` could be the start of a marker."""
    return max((partial_suffix(buf, m) for m in markers), default=0)


def could_start(buf: str, markers: Sequence[str]) -> bool:
    """True while ``buf`` (stripped of leading space) is still a prefix of some marker."""
    s = buf.lstrip()
    return any(m.startswith(s) for m in markers)


NAME_LIMIT = 200  # longer than any function name: past it the text was not a call
_NAME = re.compile(r"\s*[\w.:/-]*\s*")


def name_verdict(buf: str, ends: Sequence[str]) -> str:
    """Where a dialect expects a function's name, up to one of ``ends``: "ok", "wait" (it may
    still come) or "no" (the text is not a call). Decided by the text alone, so every
    chunking agrees."""
    i, _ = find_first(buf, ends)
    complete = i >= 0
    region = buf[:i] if complete else buf[: len(buf) - held_length(buf, ends)]
    if len(region) > NAME_LIMIT or not _NAME.fullmatch(region):
        return "no"
    if not complete:
        return "wait"
    return "ok" if region.strip() else "no"


def param_schemas(tools: Sequence[ToolSpec]) -> dict[str, Mapping[str, Any]]:
    """Each tool's ``properties``, by tool name (for dialects whose values come as text)."""
    out: dict[str, Mapping[str, Any]] = {}
    for t in tools:
        props = t.parameters.get("properties")
        out[t.name] = props if isinstance(props, Mapping) else {}
    return out


def typed_value(raw: str, schema: Any) -> Any:
    """A parameter that the model wrote as bare text, typed by its JSON schema: strings stay
    as written, numbers, booleans, objects and arrays are parsed; what does not parse stays
    text. Without a schema the text stays text."""
    if not isinstance(schema, Mapping):
        return raw
    kinds = schema.get("type")
    types = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if not types and ("anyOf" in schema or "oneOf" in schema or "enum" in schema):
        types = ["any"]
    text = raw.strip()
    for kind in types:
        if kind == "string":
            return raw
        parsed = _parse_as(kind, text)
        if parsed is not _NO:
            return parsed
    return raw


_NO = object()


def _parse_as(kind: str, text: str) -> Any:
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind == "null" and text.lower() in ("null", "none"):
        return None
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return _NO
    try:
        value = json.loads(text)
    except ValueError:
        return _NO
    if kind == "any":
        return value
    wanted = {"number": (int, float), "object": (dict,), "array": (list,)}.get(kind)
    if wanted and isinstance(value, wanted) and not isinstance(value, bool):
        return value
    return _NO


class DialectParser:
    """Base of the tool-call parsers: a buffer, the calls so far, and the cut-off flag."""

    def __init__(self, tools: Sequence[ToolSpec] = ()):
        self.buf = ""
        self.calls: list[ToolCall] = []
        self.cut_call = False
        self.schemas = param_schemas(tools)
        self.call: CallBuilder | None = None

    def feed(self, text: str) -> ReplyDelta:
        self.buf += text
        acc = Acc()
        while self._step(acc, final=False):
            pass
        return self._record(acc)

    def finish(self, finish_reason: str) -> ReplyDelta:
        acc = Acc()
        while self._step(acc, final=True):
            pass
        self._end(acc, finish_reason)
        return self._record(acc)

    def _record(self, acc: Acc) -> ReplyDelta:
        self.calls.extend(acc.calls)
        return acc.delta()

    def _step(self, acc: Acc, *, final: bool) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _end(self, acc: Acc, finish_reason: str) -> None:
        """At the end of the reply: a call still open is cut off (``length``) or closed."""
        if self.call is None:
            if self.buf:
                acc.content.append(self.buf)
                self.buf = ""
            return
        if finish_reason == "length":
            self.cut_call = True
        else:
            self.call.close(acc)
        self.call, self.buf = None, ""

    def _begin(self, acc: Acc, name: str) -> CallBuilder:
        self.call = CallBuilder(len(self.calls) + len(acc.calls), name)
        self.call.start(acc)
        return self.call

    def _value(self, name: str, key: str, raw: str) -> Any:
        return typed_value(raw, self.schemas.get(name, {}).get(key))

    def _text_until(self, acc: Acc, markers: Sequence[str], *, final: bool) -> str:
        """Moves text before the first marker to content; returns the marker (consumed), or
        "" when none is complete (holding back a possible partial one unless final)."""
        i, marker = find_first(self.buf, markers)
        if i >= 0:
            acc.content.append(self.buf[:i])
            self.buf = self.buf[i + len(marker) :]
            return marker
        keep = 0 if final else held_length(self.buf, markers)
        acc.content.append(self.buf[: len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep :]
        return ""


class PassThrough(DialectParser):
    """No call parsing at all (the request carried no tools)."""

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.buf:
            acc.content.append(self.buf)
            self.buf = ""
        return False
