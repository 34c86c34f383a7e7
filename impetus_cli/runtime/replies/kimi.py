"""Kimi K2 calls: ``<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
<|tool_call_argument_begin|>{...}<|tool_call_end|><|tool_calls_section_end|>``; the head is a
call id whose middle part is the function's name."""

from __future__ import annotations

from impetus_cli.runtime.replies.sections import SectionParser


class KimiParser(SectionParser):
    section_begin = "<|tool_calls_section_begin|>"
    section_end = "<|tool_calls_section_end|>"
    call_begin = "<|tool_call_begin|>"
    call_sep = "<|tool_call_argument_begin|>"
    call_end = "<|tool_call_end|>"

    def name_of(self, head: str) -> str:
        name = head.strip().removeprefix("functions.")
        return name.rsplit(":", 1)[0] if ":" in name else name
