"""Qwen3-Coder calls, in XML:

    <tool_call>
    <function=read_file>
    <parameter=path>
    src/app.py
    </parameter>
    </function>
    </tool_call>

Each parameter's text is typed by the tool's JSON schema (a string stays as written, numbers,
booleans, arrays and objects are parsed) and streams as one argument member when it closes.
"""

from __future__ import annotations

from impetus_cli.runtime.replies.base import (
    Acc,
    DialectParser,
    could_start,
    find_first,
    name_verdict,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FUNC, FUNC_END = "<function=", "</function>"
PARAM, PARAM_END = "<parameter=", "</parameter>"


class Qwen3CoderParser(DialectParser):
    """``<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>``."""

    state = "text"
    raw = ""  # the call's text so far, given back if it turns out not to be a call
    param = ""

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.state == "text":
            marker = self._text_until(acc, (OPEN, FUNC), final=final)
            if not marker:
                return False
            self.raw = marker
            self.state = "open" if marker == OPEN else "name"
        if self.state == "open":
            return self._expect(acc, FUNC, "name")
        if self.state == "name":
            return self._name(acc)
        if self.state == "params":
            return self._params(acc)
        if self.state == "value":
            return self._value_text(acc)
        return self._expect(acc, CLOSE, "text", optional=True)

    def _expect(self, acc: Acc, marker: str, nxt: str, optional: bool = False) -> bool:
        s = self.buf.lstrip()
        if s.startswith(marker):
            self.raw += self.buf[: len(self.buf) - len(s) + len(marker)]
            self.buf, self.state = s[len(marker) :], nxt
            return True
        if could_start(self.buf, (marker,)):
            return False
        if not optional:
            acc.content.append(self.raw)  # not a call: the rest is read again as text
        self.state = "text"
        return True

    def _name(self, acc: Acc) -> bool:
        i = self.buf.find(">")
        verdict = name_verdict(self.buf, (">",))
        if verdict == "wait":
            return False
        if verdict == "no":
            return self._not_a_call(acc)
        self._begin(acc, self.buf[:i].strip())
        self.buf, self.state = self.buf[i + 1 :], "params"
        return True

    def _params(self, acc: Acc) -> bool:
        assert self.call is not None
        s = self.buf.lstrip()
        if s.startswith(PARAM):
            i = s.find(">")
            if i < 0:
                return False
            self.param, self.buf, self.state = s[len(PARAM) : i].strip(), s[i + 1 :], "value"
            return True
        if s.startswith(FUNC_END):
            self.call.close(acc)
            self.call, self.buf, self.state = None, s[len(FUNC_END) :], "close"
            return True
        if could_start(self.buf, (PARAM, FUNC_END)):
            return False
        self.call.close(acc)  # unexpected text: the call ends with what it had
        self.call, self.state = None, "text"
        return True

    def _value_text(self, acc: Acc) -> bool:
        assert self.call is not None
        i, marker = find_first(self.buf, (PARAM_END, PARAM, FUNC_END))
        if i < 0:
            return False
        raw = self.buf[:i]
        raw = raw[1:] if raw.startswith("\n") else raw
        raw = raw[:-1] if raw.endswith("\n") else raw
        self.call.member(acc, self.param, self._value(self.call.name, self.param, raw))
        self.buf = self.buf[i + (len(PARAM_END) if marker == PARAM_END else 0) :]
        self.state = "params"
        return True

    def _not_a_call(self, acc: Acc) -> bool:
        acc.content.append(self.raw)  # the rest is read again as text
        self.state = "text"
        return True

    def _end(self, acc: Acc, finish_reason: str) -> None:
        if self.state in ("open", "name"):
            if finish_reason == "length":
                self.cut_call = True
            else:
                acc.content.append(self.raw + self.buf)
            self.buf, self.state = "", "text"
            return
        if self.state == "close":
            self.buf, self.state = "", "text"
        super()._end(acc, finish_reason)
