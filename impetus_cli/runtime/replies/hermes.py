"""Hermes / Qwen 2.5 / Qwen 3 calls: a JSON object in ``<tool_call>...</tool_call>``.

``<tool_call>\\n{"name": "f", "arguments": {"path": "a.py"}}\\n</tool_call>``. When the object
starts with its name (as these models write it), the arguments stream member by member;
otherwise the block is parsed whole when it closes. Also the format Impetus teaches models
whose template has no tool support.
"""

from __future__ import annotations

import json
import re
from typing import Any

from impetus_cli.runtime.replies.base import (
    Acc,
    DialectParser,
    JsonScanner,
    ReplyDelta,
    new_call_id,
)
from impetus_cli.runtime.types import ToolCall, ToolCallDelta

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# The head of a call written name first: {"name": "f", "arguments": (or "parameters")
HEAD = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)+)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)


def call_from(obj: Any) -> ToolCall | None:
    """A call from ``{"name", "arguments"|"parameters"}`` or ``{"function": {...}}``."""
    if not isinstance(obj, dict):
        return None
    inner = obj.get("function")
    fn: dict[str, Any] = inner if isinstance(inner, dict) else obj
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return ToolCall(id=new_call_id(), name=name, arguments=json.dumps(args, ensure_ascii=False))


def parse_json_calls(text: str) -> list[ToolCall] | None:
    """One JSON object or a list of them, each a call; None if the text is not that."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    calls = [call_from(item) for item in items]
    return None if not calls or any(c is None for c in calls) else [c for c in calls if c]


def emit_whole(parser: DialectParser, acc: Acc, calls: list[ToolCall]) -> None:
    """Calls parsed whole: each streams as its head and all its arguments at once."""
    for call in calls:
        index = len(parser.calls) + len(acc.calls)
        acc.deltas.append(ToolCallDelta(index, call.id, call.name, ""))
        acc.deltas.append(ToolCallDelta(index, arguments=call.arguments))
        acc.calls.append(call)


class HermesParser(DialectParser):
    """Calls in ``<tool_call>`` blocks anywhere in the reply."""

    state = "text"
    scanner: JsonScanner | None = None

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.state == "text":
            if not self._text_until(acc, (OPEN,), final=final):
                return False
            self.state = "body"
        if self.state == "body":
            return self._body(acc, final)
        if self.state == "args":
            return self._args(acc)
        return self._tail(acc, final)

    def _body(self, acc: Acc, final: bool) -> bool:
        head = HEAD.match(self.buf)
        if head and self.buf[head.end() : head.end() + 1] == "{":
            name = json.loads(f'"{head.group(1)}"')
            self.buf, self.state = self.buf[head.end() :], "args"
            self._begin(acc, name)
            self.scanner = JsonScanner()
            return True
        end = self.buf.find(CLOSE)
        if end < 0:
            return False  # wait for the block to close (or for _end)
        body = self.buf[:end]
        calls = parse_json_calls(body.strip())
        if calls is None:
            acc.content.append(OPEN + body + CLOSE)
        else:
            emit_whole(self, acc, calls)
        self.buf, self.state = self.buf[end + len(CLOSE) :], "text"
        return True

    def _args(self, acc: Acc) -> bool:
        assert self.scanner is not None and self.call is not None
        for key, value in self.scanner.feed(self.buf):
            self.call.member(acc, key, value)
        self.buf = ""
        if self.scanner.error:
            self.call.close(acc)  # keep what was valid; the rest is text
            self.call, self.state, self.buf = None, "text", self.scanner.text[self.scanner.i :]
            return True
        if self.scanner.done:
            self.call.close(acc)
            self.call, self.state, self.buf = None, "tail", self.scanner.rest
            return True
        return False

    def _tail(self, acc: Acc, final: bool) -> bool:
        end = self.buf.find(CLOSE)
        if end < 0:
            if final:
                self.buf, self.state = "", "text"  # the closing '}' and tag never came
            return False
        self.buf, self.state = self.buf[end + len(CLOSE) :], "text"
        return True

    def _end(self, acc: Acc, finish_reason: str) -> None:
        if self.state == "body":
            calls = parse_json_calls(self.buf.strip()) if finish_reason != "length" else None
            if calls:
                emit_whole(self, acc, calls)
            elif finish_reason == "length":
                self.cut_call = True
            else:
                acc.content.append(OPEN + self.buf)
            self.buf, self.state = "", "text"
            return
        super()._end(acc, finish_reason)


__all__ = ["HermesParser", "ReplyDelta", "call_from", "emit_whole", "parse_json_calls"]
