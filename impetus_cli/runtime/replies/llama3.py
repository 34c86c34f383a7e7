"""Llama 3.x calls: the reply is a JSON object ``{"name": "f", "parameters": {...}}``, bare or
after ``<|python_tag|>``; several may follow one another, separated by ``;``. A reply that does
not start that way is plain text from its first character on."""

from __future__ import annotations

import json

from impetus_cli.runtime.replies.base import Acc, DialectParser, JsonScanner
from impetus_cli.runtime.replies.hermes import HEAD, call_from, emit_whole

TAG = "<|python_tag|>"


class Llama3Parser(DialectParser):
    """Calls at the very start of the reply."""

    state = "start"
    scanner: JsonScanner | None = None
    whole: JsonScanner | None = None  # the call object read whole, while its head is unclear

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.state == "start":
            return self._start(acc, final)
        if self.state == "head":
            return self._head(acc, final)
        if self.state == "args":
            return self._args(acc)
        if self.state == "whole":
            return self._whole(acc)
        if self.state == "close":
            return self._close(final)
        if self.state == "next":
            return self._next(acc, final)
        if self.buf:
            acc.content.append(self.buf)
            self.buf = ""
        return False

    def _start(self, acc: Acc, final: bool) -> bool:
        s = self.buf.lstrip()
        if s.startswith(TAG):
            self.buf, self.state = s[len(TAG) :], "head"
            return True
        if s.startswith("{"):
            self.state = "head"
            return True
        if (not s or TAG.startswith(s)) and not final:
            return False
        self.state = "text"
        return True

    def _head(self, acc: Acc, final: bool) -> bool:
        head = HEAD.match(self.buf)
        if head and self.buf[head.end() : head.end() + 1] == "{":
            name = json.loads(f'"{head.group(1)}"')
            self.buf, self.state, self.scanner = self.buf[head.end() :], "args", JsonScanner()
            self.whole = None
            self._begin(acc, name)
            return True
        # Not (yet) name first: the object is read whole when it closes.
        if self.whole is None:
            self.whole = JsonScanner()
        self.whole.feed(self.buf[len(self.whole.text) :])
        if self.whole.done or self.whole.error:
            self.state, self.scanner, self.whole, self.buf = "whole", self.whole, None, ""
            return True
        return False

    def _args(self, acc: Acc) -> bool:
        assert self.scanner is not None and self.call is not None
        for key, value in self.scanner.feed(self.buf):
            self.call.member(acc, key, value)
        self.buf = ""
        if not (self.scanner.error or self.scanner.done):
            return False
        self.call.close(acc)
        rest = self.scanner.text[self.scanner.i :]
        if self.scanner.error:
            self.call, self.buf, self.state = None, rest, "text"
        else:
            self.call, self.buf, self.state = None, rest, "close"
        return True

    def _close(self, final: bool) -> bool:
        """The '}' that closes the call object, after its arguments."""
        s = self.buf.lstrip()
        if not s:
            self.buf = "" if final else self.buf
            return False
        self.buf, self.state = s[1:] if s[0] == "}" else s, "next"
        return True

    def _next(self, acc: Acc, final: bool) -> bool:
        """After a call: another one may follow after ';'; anything else is text."""
        s = self.buf.lstrip().lstrip(";").lstrip()
        if s.startswith("{"):
            self.buf, self.state = s, "head"
            return True
        if not s:
            if final:
                self.buf = ""
            return False
        self.buf, self.state = s, "text"
        return True

    def _whole(self, acc: Acc) -> bool:
        assert self.scanner is not None
        self.scanner.feed(self.buf)
        self.buf = ""
        if not (self.scanner.done or self.scanner.error):
            return False
        call = call_from(self.scanner.value()) if self.scanner.done else None
        if call is None:
            self.buf, self.state = self.scanner.text, "text"  # not a call: text from here on
            return True
        emit_whole(self, acc, [call])
        self.buf, self.state = self.scanner.rest, "next"
        return True

    def _end(self, acc: Acc, finish_reason: str) -> None:
        if self.state == "whole" and self.scanner is not None:
            self.buf, self.state = self.scanner.text + self.buf, "head"
        if self.state == "head" and self.buf:
            if finish_reason == "length":
                self.cut_call = True
            else:
                acc.content.append(self.buf)
            self.buf = ""
            return
        super()._end(acc, finish_reason)
