"""GLM 4.5 / 4.6 calls:

    <tool_call>read_file
    <arg_key>path</arg_key>
    <arg_value>src/app.py</arg_value>
    </tool_call>

Values are typed by the tool's JSON schema, as the template writes them (strings bare, other
values as JSON); each streams as one argument member when its ``</arg_value>`` arrives.
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
KEY, KEY_END, VALUE, VALUE_END = "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"


class GlmParser(DialectParser):
    """``<tool_call>NAME<arg_key>k</arg_key><arg_value>v</arg_value>...</tool_call>``."""

    state = "text"
    key = ""

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.state == "text":
            if not self._text_until(acc, (OPEN,), final=final):
                return False
            self.state = "name"
        if self.state == "name":
            return self._name(acc)
        if self.state == "args":
            return self._args(acc)
        return self._value_text(acc)

    def _name(self, acc: Acc) -> bool:
        i, marker = find_first(self.buf, ("\n", KEY, CLOSE))
        if i == 0 and marker == "\n":  # a newline before the name
            self.buf = self.buf[1:]
            return True
        verdict = name_verdict(self.buf, ("\n", KEY, CLOSE))
        if verdict == "wait":
            return False
        if verdict == "no":
            acc.content.append(OPEN)  # not a call: the rest is read again as text
            self.state = "text"
            return True
        name = self.buf[:i].strip()
        self._begin(acc, name)
        self.buf, self.state = self.buf[i + (1 if marker == "\n" else 0) :], "args"
        return True

    def _args(self, acc: Acc) -> bool:
        assert self.call is not None
        s = self.buf.lstrip()
        if s.startswith(KEY):
            i = s.find(KEY_END)
            j = s.find(VALUE, i) if i >= 0 else -1
            if j < 0:
                return False
            self.key, self.buf, self.state = s[len(KEY) : i].strip(), s[j + len(VALUE) :], "value"
            return True
        if s.startswith(CLOSE):
            self.call.close(acc)
            self.call, self.buf, self.state = None, s[len(CLOSE) :], "text"
            return True
        if could_start(self.buf, (KEY, CLOSE)):
            return False
        self.call.close(acc)
        self.call, self.state = None, "text"
        return True

    def _value_text(self, acc: Acc) -> bool:
        assert self.call is not None
        i = self.buf.find(VALUE_END)
        if i < 0:
            return False
        self.call.member(acc, self.key, self._value(self.call.name, self.key, self.buf[:i]))
        self.buf, self.state = self.buf[i + len(VALUE_END) :], "args"
        return True

    def _end(self, acc: Acc, finish_reason: str) -> None:
        if self.state == "name":
            if finish_reason == "length":
                self.cut_call = True
            else:
                acc.content.append(OPEN + self.buf)
            self.buf, self.state = "", "text"
            return
        super()._end(acc, finish_reason)
