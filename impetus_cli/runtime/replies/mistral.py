"""Mistral calls. The newer form (Mistral Small 3.2, Devstral, Magistral):
``[TOOL_CALLS]name[ARGS]{...}``, one marker per call, sometimes ``[CALL_ID]id`` before
``[ARGS]``; the arguments stream member by member. The older form (Mistral 7B v0.3, Nemo):
``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``, parsed whole when the list closes."""

from __future__ import annotations

from impetus_cli.runtime.replies.base import (
    Acc,
    DialectParser,
    JsonScanner,
    could_start,
    find_first,
    name_verdict,
)
from impetus_cli.runtime.replies.hermes import call_from, emit_whole

MARK, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"


class MistralParser(DialectParser):
    """Both Mistral forms, anywhere in the reply."""

    state = "text"
    scanner: JsonScanner | None = None
    name = ""

    def _step(self, acc: Acc, *, final: bool) -> bool:
        if self.state == "text":
            if not self._text_until(acc, (MARK,), final=final):
                return False
            self.state = "after"
        if self.state == "after":
            return self._after(acc, final)
        if self.state == "list":
            return self._list(acc)
        if self.state == "name":
            return self._name(acc)
        return self._args(acc)

    def _after(self, acc: Acc, final: bool) -> bool:
        s = self.buf.lstrip()
        if not s or (could_start(s, (ARGS, CALL_ID)) and not final):
            return False
        if s[0] in "[{" and not s.startswith((ARGS, CALL_ID)):
            self.buf, self.state, self.scanner = s, "list", JsonScanner()
        else:
            self.buf, self.state = s, "name"
        return True

    def _list(self, acc: Acc) -> bool:
        assert self.scanner is not None
        self.scanner.feed(self.buf)
        self.buf = ""
        if not (self.scanner.done or self.scanner.error):
            return False
        value = self.scanner.value() if self.scanner.done else None
        items = value if isinstance(value, list) else [value]
        calls = [call_from(item) for item in items]
        if value is None or not calls or any(c is None for c in calls):
            # Not calls: the list (or what was read of it) is text, the rest is read again.
            end = self.scanner.end if self.scanner.done else self.scanner.i
            acc.content.append(MARK + self.scanner.text[:end])
            self.buf, self.state = self.scanner.text[end:], "text"
            return True
        emit_whole(self, acc, [c for c in calls if c])
        self.buf, self.state = self.scanner.rest, "text"
        return True

    def _name(self, acc: Acc) -> bool:
        i, marker = find_first(self.buf, (ARGS, CALL_ID))
        verdict = name_verdict(self.buf, (ARGS, CALL_ID))
        if verdict == "wait":
            return False
        if verdict == "no":
            acc.content.append(MARK)  # not a call: the rest is read again as text
            self.state = "text"
            return True
        if marker == CALL_ID:  # the id is ours to choose: skip the model's
            j = self.buf.find(ARGS, i)
            if j < 0:
                return False
            self.name, self.buf = self.buf[:i].strip(), self.buf[j + len(ARGS) :]
        else:
            self.name, self.buf = self.buf[:i].strip(), self.buf[i + len(ARGS) :]
        self.state, self.scanner = "args", JsonScanner()
        self._begin(acc, self.name)
        return True

    def _args(self, acc: Acc) -> bool:
        assert self.scanner is not None and self.call is not None
        for key, value in self.scanner.feed(self.buf):
            self.call.member(acc, key, value)
        self.buf = ""
        if not (self.scanner.done or self.scanner.error):
            return False
        self.call.close(acc)
        self.call, self.state = None, "text"
        self.buf = self.scanner.rest if self.scanner.done else self.scanner.text[self.scanner.i :]
        return True

    def _end(self, acc: Acc, finish_reason: str) -> None:
        if self.state in ("after", "name", "list"):
            pending = self.scanner.text if self.state == "list" and self.scanner else ""
            if finish_reason == "length":
                self.cut_call = True
            else:
                acc.content.append(MARK + pending + self.buf)
            self.buf, self.state = "", "text"
            return
        super()._end(acc, finish_reason)
