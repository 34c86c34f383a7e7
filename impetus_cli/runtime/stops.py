"""Stop strings: the end-of-turn markers a template uses, and a streaming matcher that cuts a
reply at the first stop string without ever emitting part of one."""

from __future__ import annotations

from collections.abc import Sequence

from impetus_cli.runtime.templating_builtin import BUILTIN, template_for

# End-of-turn markers of the common chat formats. A model whose vocabulary has them as
# end-of-generation tokens stops by itself; these catch the ones that arrive as text.
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>")


def stop_strings_for(architecture: str, template: str | None) -> tuple[str, ...]:
    """End-of-turn markers, in case the model emits them as text rather than an EOG token."""
    text = template or BUILTIN[template_for(architecture, "")]
    # Harmony (gpt-oss) ends every message with <|end|>, including the reasoning that comes
    # before the answer: it is not an end of turn there.
    harmony = "<|channel|>" in text
    return tuple(m for m in END_OF_TURN if m in text and not (harmony and m == "<|end|>"))


def partial_suffix(buf: str, marker: str) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:n]):
            return n
    return 0


class StopMatcher:
    """Streams text, cutting at the first stop string and holding back any tail that could be
    the start of one (a stop split across tokens is never emitted)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return buf[:cut], True
        keep = max((partial_suffix(buf, s) for s in self.stops), default=0)
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    @staticmethod
    def _partial(buf: str, stop: str) -> int:
        return partial_suffix(buf, stop)

    def flush(self) -> str:
        held, self.held = self.held, ""
        return "" if self.stopped else held
