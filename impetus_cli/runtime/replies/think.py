"""Reasoning between tags at the start of a reply: ``<think>...</think>`` (Qwen3, DeepSeek R1
and V3.1, GLM, Kimi K2 Thinking, MiniMax), ``[THINK]...[/THINK]`` (Magistral),
``<seed:think>...</seed:think>`` (Seed-OSS).

The reasoning is the text between the tags, without the newlines around it; the answer starts
after the close tag and its leading newlines. When the template opened the tag in the prompt,
the reply starts inside the reasoning and only the close tag is generated.
"""

from __future__ import annotations

from impetus_cli.runtime.stops import partial_suffix

TAGS = {
    "think": ("<think>", "</think>"),
    "mistral": ("[THINK]", "[/THINK]"),
    "seed": ("<seed:think>", "</seed:think>"),
}


class ThinkSplitter:
    """Splits streamed text into (reasoning, content)."""

    def __init__(self, open_tag: str, close_tag: str, *, inside: bool = False):
        self.open, self.close = open_tag, close_tag
        self.state = "reason" if inside else "start"
        self.buf = ""
        self.fresh = True  # no reasoning or content character emitted yet in this section

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> tuple[str, str]:
        reasoning = content = ""
        if self.state == "start":
            s = self.buf.lstrip()
            if s.startswith(self.open):
                self.buf, self.state, self.fresh = s[len(self.open) :], "reason", True
            elif (self.open.startswith(s)) and not final:
                return "", ""
            else:
                self.state = "content"
        if self.state == "reason":
            reasoning = self._reason(final)
        if self.state == "content":
            content = self._content()
        return reasoning, content

    def _reason(self, final: bool) -> str:
        if self.fresh:
            self.buf = self.buf.lstrip("\n")
            self.fresh = not self.buf
        i = self.buf.find(self.close)
        if i >= 0:
            out = self.buf[:i].rstrip()
            self.buf, self.state, self.fresh = self.buf[i + len(self.close) :], "content", True
            return out
        if final:
            out, self.buf = self.buf.rstrip(), ""
            return out
        # Hold a possible partial close tag and the whitespace before it (stripped if the
        # tag follows).
        keep = partial_suffix(self.buf, self.close)
        body = self.buf[: len(self.buf) - keep]
        trimmed = body.rstrip()
        self.buf = self.buf[len(trimmed) :]
        return trimmed

    def _content(self) -> str:
        if self.fresh:
            self.buf = self.buf.lstrip("\n")
            self.fresh = not self.buf
        out, self.buf = self.buf, ""
        return out
