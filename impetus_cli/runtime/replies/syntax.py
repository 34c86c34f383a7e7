"""How each dialect writes one call: the text a model of that family emits. Used to teach a
model its own syntax where its template does not describe tools, and by the tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _xml_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def write_call(dialect: str, name: str, args: Mapping[str, Any]) -> str:
    """One call of ``name`` with ``args`` as a model of ``dialect`` writes it."""
    js = json.dumps(dict(args), ensure_ascii=False)
    if dialect == "qwen3-coder":
        params = "".join(
            f"<parameter={k}>\n{_xml_value(v)}\n</parameter>\n" for k, v in args.items()
        )
        return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"
    if dialect == "glm":
        pairs = "".join(
            f"<arg_key>{k}</arg_key>\n<arg_value>{_xml_value(v)}</arg_value>\n"
            for k, v in args.items()
        )
        return f"<tool_call>{name}\n{pairs}</tool_call>"
    if dialect == "harmony":
        return f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{js}<|call|>"
    if dialect == "deepseek":
        return (
            f"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{js}"
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
        )
    if dialect == "kimi":
        return (
            f"<|tool_calls_section_begin|><|tool_call_begin|>functions.{name}:0"
            f"<|tool_call_argument_begin|>{js}<|tool_call_end|><|tool_calls_section_end|>"
        )
    if dialect == "mistral":
        return f"[TOOL_CALLS]{name}[ARGS]{js}"
    if dialect == "mistral-json":
        return "[TOOL_CALLS]" + json.dumps([{"name": name, "arguments": dict(args)}])
    if dialect == "llama3":
        return json.dumps({"name": name, "parameters": dict(args)}, ensure_ascii=False)
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": dict(args)}) + "\n</tool_call>"
