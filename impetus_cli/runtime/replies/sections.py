"""Calls in a section of special tokens: ``BEGIN (CALL_BEGIN head SEP args CALL_END)* END``.

DeepSeek V3.x and Kimi K2 write their calls this way; the subclasses say which tokens and how
the head names the function. The arguments, a JSON object, stream member by member.
"""

from __future__ import annotations

from impetus_cli.runtime.replies.base import (
    Acc,
    DialectParser,
    JsonScanner,
    could_start,
    name_verdict,
)


class SectionParser(DialectParser):
    """A call section anywhere in the reply; text around it is content."""

    section_begin = ""
    section_end = ""
    call_begin = ""
    call_sep = ""
    call_end = ""

    state = "text"
    scanner: JsonScanner | None = None
    pending = ""  # marker text consumed since the last call, given back if no call follows

    def name_of(self, head: str) -> str:
        return head.strip()

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.state == "text":
            marker = self._text_until(acc, (self.section_begin, self.call_begin), final=final)
            if not marker:
                return False
            self.state = "section" if marker == self.section_begin else "head"
            self.pending = marker
        if self.state == "section":
            return self._section(acc)
        if self.state == "head":
            return self._head(acc)
        if self.state == "args":
            return self._args(acc)
        return self._tail(acc)

    def _section(self, acc: Acc) -> bool:
        s = self.buf.lstrip()
        for marker, nxt in ((self.call_begin, "head"), (self.section_end, "text")):
            if s.startswith(marker):
                self.pending += self.buf[: len(self.buf) - len(s) + len(marker)]
                self.buf, self.state = s[len(marker) :], nxt
                if nxt == "text":
                    self.pending = ""
                return True
        if could_start(self.buf, (self.call_begin, self.section_end)):
            return False
        self._give_back(acc)  # not the expected token: the rest is text
        return True

    def _give_back(self, acc: Acc) -> None:
        acc.content.append(self.pending)
        self.pending, self.state = "", "text"

    def _head(self, acc: Acc) -> bool:
        i = self.buf.find(self.call_sep)
        verdict = name_verdict(self.buf, (self.call_sep,))
        if verdict == "wait":
            return False
        if verdict == "no":
            self._give_back(acc)
            return True
        head, rest = self.buf[:i], self.buf[i + len(self.call_sep) :]
        name, rest = self.split_head(head, rest)
        if name is None:
            return False
        self._begin(acc, name)
        self.buf, self.state, self.scanner = rest, "args", JsonScanner()
        self.pending = ""
        return True

    def split_head(self, head: str, rest: str) -> tuple[str | None, str]:
        """The function's name and the text where its arguments start (None: need more)."""
        return self.name_of(head), rest

    def _args(self, acc: Acc) -> bool:
        assert self.scanner is not None and self.call is not None
        for key, value in self.scanner.feed(self.buf):
            self.call.member(acc, key, value)
        self.buf = ""
        if not (self.scanner.done or self.scanner.error):
            return False
        self.call.close(acc)
        if self.scanner.error:
            self.call, self.state = None, "text"
            self.buf = self.scanner.text[self.scanner.i :]
        else:
            self.call, self.state, self.buf = None, "tail", self.scanner.rest
        return True

    def _tail(self, acc: Acc) -> bool:
        i = self.buf.find(self.call_end)
        if i < 0:
            return False
        self.buf, self.state = self.buf[i + len(self.call_end) :], "section"
        return True

    def _end(self, acc: Acc, finish_reason: str) -> None:
        if self.state == "head" and finish_reason == "length":
            self.cut_call = True
        elif self.state in ("section", "head") and (self.pending or self.buf.strip()):
            acc.content.append(self.pending + self.buf)
        if self.state in ("section", "head", "tail"):
            self.buf, self.state, self.pending = "", "text", ""
        super()._end(acc, finish_reason)
