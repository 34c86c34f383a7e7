"""DeepSeek calls, in special tokens. V3.1 and later:
``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜><｜tool▁calls▁end｜>``;
V3 and the R1 family write the head as ``function<｜tool▁sep｜>NAME`` followed by the
arguments in a json code fence, which is read too."""

from __future__ import annotations

from impetus_cli.runtime.replies.sections import SectionParser

FENCE = "```json"


class DeepSeekParser(SectionParser):
    section_begin = "<｜tool▁calls▁begin｜>"
    section_end = "<｜tool▁calls▁end｜>"
    call_begin = "<｜tool▁call▁begin｜>"
    call_sep = "<｜tool▁sep｜>"
    call_end = "<｜tool▁call▁end｜>"

    def split_head(self, head: str, rest: str) -> tuple[str | None, str]:
        if head.strip() != "function":
            return head.strip(), rest
        i = rest.find("\n")  # R1 form: the name, a newline, then ```json
        if i < 0:
            return None, rest
        args = rest[i + 1 :].lstrip()
        if FENCE.startswith(args[: len(FENCE)]) and len(args) < len(FENCE):
            return None, rest
        return rest[:i].strip(), args.removeprefix(FENCE)
