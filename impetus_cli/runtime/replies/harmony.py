"""gpt-oss's Harmony format: a reply is a run of messages, each a header and a body.

    <|channel|>analysis<|message|>Reasoning...<|end|>
    <|start|>assistant<|channel|>commentary to=functions.read_file <|constrain|>json<|message|>{"path": "a.py"}<|call|>
    <|start|>assistant<|channel|>final<|message|>The answer.<|return|>

The analysis channel is reasoning; final (and commentary addressed to no one, a preamble) is
content; a message addressed ``to=functions.NAME`` is a call whose JSON arguments stream member
by member. The recipient may stand before or after the channel. ``<|call|>`` and
``<|return|>`` end generation, so a body may also end with the reply.
"""

from __future__ import annotations

import re

from impetus_cli.runtime.replies.base import (
    Acc,
    DialectParser,
    JsonScanner,
    ReplyDelta,
    find_first,
    held_length,
)
from impetus_cli.runtime.types import ToolSpec

START, CHANNEL, MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
ENDS = ("<|end|>", "<|call|>", "<|return|>", START)
HEADER_LIMIT = 400  # longer than any real header: past it the text is not Harmony
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"to=([^\s<]+)")


class HarmonyParser(DialectParser):
    """Reasoning, content and calls of a gpt-oss reply."""

    def __init__(self, tools: bool | list[ToolSpec] = False):
        super().__init__(tools if isinstance(tools, list) else ())
        self.tools = bool(tools)
        self.state = "header"
        self.kind = ""  # "reasoning", "content" or "call" for the current body
        self.reasoning: list[str] = []
        self.scanner: JsonScanner | None = None

    def feed(self, text: str) -> ReplyDelta:
        self.reasoning = []
        delta = super().feed(text)
        return ReplyDelta(
            delta.content, "".join(self.reasoning), delta.tool_call_deltas, delta.tool_calls
        )

    def finish(self, finish_reason: str) -> ReplyDelta:
        self.reasoning = []
        delta = super().finish(finish_reason)
        return ReplyDelta(
            delta.content, "".join(self.reasoning), delta.tool_call_deltas, delta.tool_calls
        )

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.state == "header":
            return self._header(acc, final)
        if self.state == "raw":
            acc.content.append(self.buf)
            self.buf = ""
            return False
        if self.kind == "call":
            return self._args(acc)
        return self._body(acc, final)

    def _header(self, acc: Acc, final: bool) -> bool:
        s = self.buf.lstrip()
        for end in ENDS[:3]:  # the end of the previous message, when it came late
            if s.startswith(end):
                self.buf = s[len(end) :]
                return True
        if not s:
            return False
        harmonyish = s.startswith((START, CHANNEL)) or any(
            m.startswith(s) for m in (START, CHANNEL, *ENDS[:3])
        )
        i = s.find(MESSAGE)
        if harmonyish and i < 0 and len(s) <= HEADER_LIMIT:
            return False  # wait for <|message|> (at the end, _end gives it back)
        if not harmonyish or i < 0 or i > HEADER_LIMIT:
            self.state = "raw"  # not Harmony: plain text
            return True
        self.buf = s
        header, self.buf = self.buf[:i], self.buf[i + len(MESSAGE) :]
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        name = recipient.group(1) if recipient else ""
        if self.tools and name.startswith("functions."):
            self.kind, self.scanner = "call", JsonScanner()
            self._begin(acc, name.removeprefix("functions."))
        elif channel and channel.group(1) == "analysis":
            self.kind = "reasoning"
        else:
            self.kind = "content"
        self.state = "body"
        return True

    def _body(self, acc: Acc, final: bool) -> bool:
        i, marker = find_first(self.buf, ENDS)
        out = self.reasoning if self.kind == "reasoning" else acc.content
        if i >= 0:
            out.append(self.buf[:i])
            skip = 0 if marker == START else len(marker)
            self.buf, self.state = self.buf[i + skip :], "header"
            return True
        keep = 0 if final else held_length(self.buf, ENDS)
        out.append(self.buf[: len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep :]
        return False

    def _args(self, acc: Acc) -> bool:
        assert self.scanner is not None and self.call is not None
        for key, value in self.scanner.feed(self.buf):
            self.call.member(acc, key, value)
        self.buf = ""
        if not (self.scanner.done or self.scanner.error):
            return False
        self.call.close(acc)
        rest = self.scanner.rest if self.scanner.done else self.scanner.text[self.scanner.i :]
        self.call, self.state, self.buf = None, "header", rest
        return True

    def _end(self, acc: Acc, finish_reason: str) -> None:
        if self.state == "header" and self.buf.strip():
            acc.content.append(self.buf)  # a header that never got its message
            self.buf = ""
        super()._end(acc, finish_reason)
