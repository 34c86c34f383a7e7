"""Anthropic Messages (``/v1/messages``, ``/v1/messages/count_tokens``): JSON -> ChatRequest.

Pure functions, tested without HTTP. What Claude Code and the Anthropic SDKs send is accepted:
the conversation (anthropic_content), tools without ``type`` and server tools (accepted and
skipped: we do not run them), ``tool_choice``, ``thinking``, ``output_config``,
``stop_sequences`` and the sampling fields; ``context_management``, ``metadata`` and unknown
fields are ignored. A value of the wrong type raises ImpetusError with ``param`` set, which
becomes a 400 in Anthropic's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from impetus_cli.runtime.types import ChatRequest, Reasoning, SamplingParams, ToolSpec
from impetus_cli.server.protocols.anthropic_content import messages
from impetus_cli.server.protocols.fields import (
    bad,
    flag,
    integer,
    model_id,
    number,
    obj,
    stop_list,
)
from impetus_cli.server.protocols.openai_parse import tool_spec

EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
THINKING = ("enabled", "adaptive", "disabled", "between_tools")


@dataclass(frozen=True)
class MessagesCall:
    """One ``/v1/messages`` request: the runtime request and how to answer it."""

    request: ChatRequest
    stream: bool = False
    one_call: bool = False  # disable_parallel_tool_use: at most one tool_use block


def messages_request(body: Any) -> MessagesCall:
    body = obj(body, "body")
    chat = chat_request(body)
    # 0 evaluates the prompt and generates nothing: how clients warm the cache ahead of time.
    sampling = replace(chat.sampling, max_tokens=integer(body, "max_tokens", 0, 10_000_000))
    choice = body.get("tool_choice")
    one_call = isinstance(choice, Mapping) and choice.get("disable_parallel_tool_use") is True
    chat = replace(chat, sampling=sampling, parallel_tool_calls=not one_call)
    return MessagesCall(chat, flag(body, "stream"), one_call)


def chat_request(body: Any) -> ChatRequest:
    """The request without its reply settings: what ``count_tokens`` counts, too."""
    body = obj(body, "body")
    specs = tools(body.get("tools"))
    return ChatRequest(
        model=model_id(body),
        messages=messages(body.get("system"), body.get("messages")),
        sampling=sampling(body),
        tools=specs,
        tool_choice=tool_choice(body.get("tool_choice"), specs),
        response_format=output_format(body),
        reasoning=reasoning(body),
    )


def sampling(body: Mapping[str, Any]) -> SamplingParams:
    defaults = SamplingParams()
    top_k = integer(body, "top_k", 0, 100_000)
    metadata = body.get("metadata")
    if metadata is not None:
        obj(metadata, "metadata")
    return SamplingParams(
        temperature=number(body, "temperature", 0, 1, defaults.temperature) or 0.0,
        top_p=number(body, "top_p", 0, 1, defaults.top_p) or defaults.top_p,
        top_k=top_k if top_k is not None else defaults.top_k,
        stop=stop_list(body.get("stop_sequences"), "stop_sequences"),
    )


def tools(value: Any) -> tuple[ToolSpec, ...]:
    """Client tools (no ``type``, or ``custom``); typed tools that Anthropic defines or runs
    (``web_search_20250305``, ``bash_20250124``...) carry no schema here and are skipped."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("'tools' must be an array.", "tools")
    specs = []
    for i, raw in enumerate(value):
        tool = obj(raw, f"tools[{i}]")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            if not isinstance(kind, str):
                raise bad("A tool's 'type' must be a string.", f"tools[{i}].type")
            continue
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, Mapping):
            raise bad("A tool's 'input_schema' must be an object.", f"tools[{i}].input_schema")
        specs.append(
            tool_spec(
                tool.get("name"),
                tool.get("description"),
                {"type": "object"} if schema is None else schema,
                f"tools[{i}]",
            )
        )
    return tuple(specs)


def tool_choice(value: Any, specs: tuple[ToolSpec, ...]) -> str | None:
    """auto, any (-> required), none, or {"type": "tool", "name": ...} (-> its name)."""
    if value is None:
        return None
    choice = obj(value, "tool_choice")
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return str(kind)
    if kind == "any":
        return "required"
    if kind == "tool":
        name = choice.get("name")
        if name in {t.name for t in specs}:
            return str(name)
        raise bad(f"tool_choice names {name!r}, which is not in 'tools'.", "tool_choice.name")
    raise bad("'tool_choice.type' must be auto, any, tool or none.", "tool_choice.type")


def reasoning(body: Mapping[str, Any]) -> Reasoning:
    """``thinking`` (enabled with a budget, adaptive: the model's own default, disabled) and
    ``output_config.effort``."""
    config = body.get("output_config")
    effort = obj(config, "output_config").get("effort") if config is not None else None
    if effort is not None and effort not in EFFORTS:
        raise bad(f"'output_config.effort' must be one of {', '.join(EFFORTS)}.", "output_config")
    level = EFFORTS.get(effort) if isinstance(effort, str) else None
    thinking = body.get("thinking")
    if thinking is None:
        return Reasoning(effort=level)
    kind = obj(thinking, "thinking").get("type")
    if kind not in THINKING:
        raise bad(f"'thinking.type' must be one of {', '.join(THINKING)}.", "thinking.type")
    if kind == "disabled":
        return Reasoning(enabled=False)
    budget = integer(thinking, "budget_tokens", 1, 10_000_000, "thinking.budget_tokens")
    return Reasoning(
        enabled=True if kind == "enabled" else None, effort=level, budget_tokens=budget
    )


def output_format(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Structured output (``output_config.format``, or the older top-level ``output_format``):
    a JSON schema the reply must follow, as a response_format the runtime constrains with."""
    config = body.get("output_config")
    fmt = obj(config, "output_config").get("format") if config is not None else None
    fmt = fmt if fmt is not None else body.get("output_format")
    if fmt is None:
        return None
    fmt = obj(fmt, "output_config.format")
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), Mapping):
        raise bad(
            "An output format must be {'type': 'json_schema', 'schema': {...}}.",
            "output_config.format",
        )
    return {"type": "json_schema", "json_schema": {"schema": fmt["schema"]}}
