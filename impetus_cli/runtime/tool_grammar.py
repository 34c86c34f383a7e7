"""Forced tool choice: a GBNF grammar that makes the model write a call in its own dialect.

``tool_call_grammar(dialect, tools, choice, parallel=...)`` for ``tool_choice`` "required" (any
of the tools) or a function's name: the reply is one call (or, when parallel calls are
allowed and the dialect can write several, one or more), its arguments constrained by the
tool's JSON schema (json_grammar.py, with its bounds). The grammar stops where the dialect's
end-of-generation token comes (gpt-oss's ``<|call|>``, Mistral's ``</s>``): llama.cpp allows
only end-of-generation tokens once a grammar is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.json_grammar import GrammarBuilder, literal, rule_name
from impetus_cli.runtime.types import ToolSpec

PARAM = "tools"
# Bare text of an XML parameter: anything but the start of a closing tag.
BAD = r"\uD800-\uDFFF\U00110000-\U001FFFFF"  # not characters (see json_grammar)
XML_TEXT = rf'( [^<{BAD}] | "<" [^/<{BAD}] )*'
# Calls one forced reply may make: the grammar is then complete and only an end-of-generation
# token may follow, so a model that never stops (a base model) still ends its reply.
MAX_CALLS = 16
# Dialects whose template can hold one call per reply only.
SINGLE = ("harmony", "llama3")


def chosen_tools(tools: Sequence[ToolSpec], choice: str) -> list[ToolSpec]:
    """The tools a forced choice allows: all of them ("required") or the named one."""
    if not tools:
        raise ImpetusError("tool_choice requires tools.", param="tool_choice")
    if choice == "required":
        return list(tools)
    named = [t for t in tools if t.name == choice]
    if not named:
        raise ImpetusError(
            f"tool_choice names {choice!r}, which is not one of the tools.",
            'Name a function from `tools`, or use "required".',
            param="tool_choice",
        )
    return named


def tool_call_grammar(
    dialect: str, tools: Sequence[ToolSpec], choice: str, *, parallel: bool, prefix: str = ""
) -> str:
    """The grammar for a forced call. ``prefix``: text the reply must start with first, e.g.
    ``</think>`` when the prompt opened the reasoning (the call then follows it)."""
    b = GrammarBuilder(PARAM)
    calls = [_call(b, dialect, t) for t in chosen_tools(tools, choice)]
    one = b.add("call", " | ".join(calls))
    many = parallel and dialect not in SINGLE
    if dialect in ("deepseek", "kimi"):
        begin, end = _SECTIONS[dialect]
        body = f"{literal(begin)} {one}{f'{{1,{MAX_CALLS}}}' if many else ''} {literal(end)}"
    elif dialect == "mistral-json":
        sep = ' ", " ' + one
        rest = f"({sep}){{0,{MAX_CALLS - 1}}}"
        body = f'"[TOOL_CALLS][" {one} {rest} "]"' if many else f'"[TOOL_CALLS][" {one} "]"'
    else:
        sep = {"hermes": '"\\n"', "qwen3-coder": '"\\n"', "glm": '"\\n"'}.get(dialect, "")
        body = f"{one} ( {sep} {one} ){{0,{MAX_CALLS - 1}}}" if many else one
    return b.text(f"{literal(prefix)} {body}" if prefix else body)


_XML = {  # call head, call tail, parameter head, parameter tail
    "qwen3-coder": (
        "<tool_call>\n<function={n}>\n",
        "</function>\n</tool_call>",
        "<parameter={k}>\n",
        "\n</parameter>\n",
    ),
    "glm": (
        "<tool_call>{n}\n",
        "</tool_call>",
        "<arg_key>{k}</arg_key>\n<arg_value>",
        "</arg_value>\n",
    ),
}
_SECTIONS = {
    "deepseek": ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"),
    "kimi": ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"),
}


def _call(b: GrammarBuilder, dialect: str, tool: ToolSpec) -> str:
    name = tool.name
    schema: Mapping[str, Any] = tool.parameters or {"type": "object"}
    if dialect in ("qwen3-coder", "glm"):
        head, tail, open_, close = _XML[dialect]
        params = _xml_members(b, tool, open_, close)
        return b.add(f"call-{name}", f"{literal(head.format(n=name))} {params} {literal(tail)}")
    args = b.schema({"type": "object", **schema}, f"args-{name}")
    head, tail = _json_frame(dialect, name)
    return b.add(f"call-{name}", f"{literal(head)} {args} {literal(tail)}")


def _json_frame(dialect: str, name: str) -> tuple[str, str]:
    """The text around a call's JSON arguments."""
    quoted = json.dumps(name)
    frames = {
        "harmony": (f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>", ""),
        "deepseek": (f"<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>", "<｜tool▁call▁end｜>"),
        "kimi": (
            f"<|tool_call_begin|>functions.{name}:0<|tool_call_argument_begin|>",
            "<|tool_call_end|>",
        ),
        "mistral": (f"[TOOL_CALLS]{name}[ARGS]", ""),
        "mistral-json": (f'{{"name": {quoted}, "arguments": ', "}"),
        "llama3": (f'{{"name": {quoted}, "parameters": ', "}"),
    }
    return frames.get(
        dialect, (f'<tool_call>\n{{"name": {quoted}, "arguments": ', "}\n</tool_call>")
    )


def _xml_members(b: GrammarBuilder, tool: ToolSpec, open_: str, close: str) -> str:
    """XML-style parameters: the required ones in order, then each optional one or not."""
    props = tool.parameters.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = [k for k in tool.parameters.get("required", []) if k in props]
    b.defs = {**tool.parameters.get("definitions", {}), **tool.parameters.get("$defs", {})}
    parts = []
    for key, spec in props.items():
        value = _xml_value(b, spec, f"{tool.name}-{key}")
        member = f"{literal(open_.format(k=key))} {value} {literal(close)}"
        parts.append(member if key in required else f"( {member} )?")
    return " ".join(parts) if parts else '""'


def _xml_value(b: GrammarBuilder, spec: Any, name: str) -> str:
    """A parameter as the template writes it: strings bare, other values as JSON."""
    if not isinstance(spec, Mapping):
        return b.add(f"{name}-text", XML_TEXT)
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        values = (literal(v if isinstance(v, str) else json.dumps(v)) for v in enum)
        return "( " + " | ".join(values) + " )"
    if spec.get("type") == "string":
        return b.add(f"{rule_name(name)}-text", XML_TEXT)
    return b.schema(spec, name, depth=1)
