"""What a model's reply text turns into: content, reasoning and tool calls, streamed.

``reply_parser(template, architecture, tools=..., prompt=...)`` makes one ``ReplyParser`` per
request. Its ``feed(text)`` returns a ``ReplyDelta`` for each piece of model text and
``finish(finish_reason)`` the rest; it never raises on model output. Each model family writes
calls in its own dialect (``tool_dialect`` names it from the chat template) and reasoning
between its own markers; one module per dialect sits beside this one, over the common
machinery in base.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from impetus_cli.runtime.replies.base import DialectParser, PassThrough, ReplyDelta, new_call_id
from impetus_cli.runtime.replies.deepseek import DeepSeekParser
from impetus_cli.runtime.replies.glm import GlmParser
from impetus_cli.runtime.replies.harmony import HarmonyParser
from impetus_cli.runtime.replies.hermes import HermesParser, parse_json_calls
from impetus_cli.runtime.replies.kimi import KimiParser
from impetus_cli.runtime.replies.llama3 import Llama3Parser
from impetus_cli.runtime.replies.mistral import MistralParser
from impetus_cli.runtime.replies.qwen3_coder import Qwen3CoderParser
from impetus_cli.runtime.replies.think import TAGS, ThinkSplitter
from impetus_cli.runtime.types import ToolCall, ToolSpec

__all__ = [
    "DIALECTS",
    "ReplyDelta",
    "ReplyParser",
    "new_call_id",
    "parse_json_calls",
    "preserved_markers",
    "reasoning_tags",
    "reply_parser",
    "tool_dialect",
]

DIALECTS: dict[str, type[DialectParser]] = {
    "hermes": HermesParser,
    "qwen3-coder": Qwen3CoderParser,
    "glm": GlmParser,
    "harmony": HarmonyParser,
    "deepseek": DeepSeekParser,
    "kimi": KimiParser,
    "mistral": MistralParser,
    "mistral-json": MistralParser,  # same parser: it reads both Mistral forms
    "llama3": Llama3Parser,
}

# Architectures that reason between <think> tags even when no template says so.
_THINKING_ARCHS = ("qwen3", "qwen3moe", "deepseek2", "glm4moe")


def tool_dialect(template: str | None, architecture: str) -> str:
    """The tool-call syntax a model writes, from its chat template (then its architecture).
    A model without a template is taught Hermes ``<tool_call>`` JSON by our tool prompt."""
    text = template or ""
    arch = architecture.lower()
    checks = (
        ("harmony", "<|channel|>" in text or arch == "gpt-oss"),
        ("qwen3-coder", "<function=" in text and "<parameter=" in text),
        ("glm", "<arg_key>" in text),
        ("deepseek", "tool▁call▁begin" in text),
        ("kimi", "<|tool_call_begin|>" in text or "<|tool_calls_section_begin|>" in text),
        ("mistral", "[ARGS]" in text),
        ("mistral-json", "[TOOL_CALLS]" in text),
        ("llama3", "<|python_tag|>" in text),
        ("llama3", "<|start_header_id|>" in text and "<tool_call>" not in text and bool(text)),
        ("hermes", "<tool_call>" in text),
    )
    for name, hit in checks:
        if hit:
            return name
    return "hermes"


def reasoning_tags(template: str | None, architecture: str) -> tuple[str, str] | None:
    """The markers a model puts its reasoning between (None: it does not reason in text;
    Harmony's channels are read by its own parser)."""
    text = template or ""
    if "[THINK]" in text:
        return TAGS["mistral"]
    if "<seed:think>" in text:
        return TAGS["seed"]
    if "<think>" in text or "</think>" in text:
        return TAGS["think"]
    if not text and architecture.lower() in _THINKING_ARCHS:
        return TAGS["think"]
    return None


# The markers each dialect's parser reads. Several are control tokens in their models'
# vocabularies, which a detokenizer drops unless told to render special tokens.
MARKERS = {
    "hermes": ("<tool_call>", "</tool_call>"),
    "qwen3-coder": ("<tool_call>", "</tool_call>", "<function=", "</function>"),
    "glm": (
        "<tool_call>",
        "</tool_call>",
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
    ),
    "harmony": (
        "<|start|>",
        "<|channel|>",
        "<|message|>",
        "<|constrain|>",
        "<|end|>",
        "<|call|>",
        "<|return|>",
    ),
    "deepseek": (
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁sep｜>",
    ),
    "kimi": (
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>",
        "<|tool_call_begin|>",
        "<|tool_call_end|>",
        "<|tool_call_argument_begin|>",
    ),
    "mistral": ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
    "mistral-json": ("[TOOL_CALLS]",),
    "llama3": ("<|python_tag|>",),
}


def preserved_markers(template: str | None, architecture: str) -> tuple[str, ...]:
    """The marker texts the reply parser must see in the generated text. An engine renders a
    generated token whose text is one of these even when it is a control token (as
    llama-server's "preserved tokens" do); other control tokens stay unrendered."""
    tags = reasoning_tags(template, architecture) or ()
    return MARKERS[tool_dialect(template, architecture)] + tuple(tags)


class ReplyParser:
    """One per request: reasoning first, then calls out of what is left."""

    def __init__(self, calls: DialectParser, think: ThinkSplitter | None = None):
        self._calls, self._think = calls, think

    @property
    def calls(self) -> list[ToolCall]:
        """Every complete call so far."""
        return self._calls.calls

    @property
    def cut_call(self) -> bool:
        """True when the reply ended (``length``) inside a call: that call was dropped."""
        return self._calls.cut_call

    def feed(self, text: str) -> ReplyDelta:
        if self._think is None:
            return self._calls.feed(text)
        reasoning, content = self._think.feed(text)
        return ReplyDelta(reasoning=reasoning) + self._calls.feed(content)

    def finish(self, finish_reason: str) -> ReplyDelta:
        if self._think is None:
            return self._calls.finish(finish_reason)
        reasoning, content = self._think.finish()
        return (
            ReplyDelta(reasoning=reasoning)
            + self._calls.feed(content)
            + self._calls.finish(finish_reason)
        )


def reply_parser(
    template: str | None,
    architecture: str,
    *,
    tools: bool | Sequence[ToolSpec],
    prompt: str = "",
) -> ReplyParser:
    """The parser for one reply. ``tools``: the request's tools (their schemas type the
    values of XML dialects), or a bool; without tools no call is parsed at all (text such as
    Cline's XML tool tags passes through). ``prompt``: the rendered prompt, which tells
    whether the reply starts inside reasoning (a template that opens ``<think>`` for it)."""
    specs = list(tools) if not isinstance(tools, bool) else []
    wanted = bool(tools)
    dialect = tool_dialect(template, architecture)
    if dialect == "harmony":
        return ReplyParser(HarmonyParser(specs if specs else wanted))
    calls = DIALECTS[dialect](specs) if wanted else PassThrough()
    tags = reasoning_tags(template, architecture)
    if tags is None:
        return ReplyParser(calls)
    inside = prompt.rstrip().endswith(tags[0])
    return ReplyParser(calls, ThinkSplitter(*tags, inside=inside))
