"""OpenAI Responses (``POST /v1/responses``): JSON -> a ChatRequest and what the reply repeats.

Pure functions over a ResponseStore (for ``previous_response_id`` and ``item_reference``).
Codex sends the whole history as ``input`` items with ``store: false``; other clients chain
turns with ``previous_response_id``. Items become messages in responses_items, tools in
responses_tools. Features that would silently do something else here (background responses,
conversations, stored prompts) are refused with a 400 that says what to do instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.types import ChatRequest, Reasoning, SamplingParams
from impetus_cli.server.protocols import responses_items as items
from impetus_cli.server.protocols.fields import (
    MAX_MESSAGES,
    bad,
    flag,
    integer,
    keep_alive,
    max_tokens,
    model_id,
    number,
    obj,
    stop_list,
    text,
)
from impetus_cli.server.protocols.responses_store import Item, ResponseStore
from impetus_cli.server.protocols.responses_tools import ToolName, tool_choice, tools

LOGPROBS = "message.output_text.logprobs"
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


class PreviousResponseNotFound(ImpetusError):
    code = "previous_response_not_found"


@dataclass(frozen=True)
class ResponsesCall:
    """One parsed request: the chat request, and what the Response object repeats back."""

    chat: ChatRequest
    stream: bool
    store: bool
    input_items: tuple[Item, ...]  # this request's own items (kept with the response)
    previous_response_id: str | None
    echo: Mapping[str, Any]  # request fields every Response object carries
    tool_names: Mapping[str, ToolName] = field(default_factory=dict)
    include: frozenset[str] = frozenset()


def responses_request(body: Any, store: ResponseStore | None = None) -> ResponsesCall:
    """Validate and translate one request; ``store`` resolves ``previous_response_id`` and
    ``item_reference`` (without one, both are "not found"). Raises ImpetusError (a 400)."""
    body = obj(body, "body")
    _refuse_unsupported(body)
    specs, names = tools(body.get("tools"))
    specs, choice = tool_choice(body.get("tool_choice"), specs, names)
    previous = text(body, "previous_response_id")
    own = own_items(body.get("input"), store, required=previous is None)
    earlier = _history(previous, store)
    if len(earlier) + len(own) > MAX_MESSAGES:
        raise bad(f"The conversation holds more than {MAX_MESSAGES} items.", "input")
    instructions = text(body, "instructions")
    messages = items.messages([*earlier, *own], names, instructions, stored=len(earlier))
    include = _include(body.get("include"))
    sampling = _sampling(body, include)
    chat = ChatRequest(
        model=model_id(body),
        messages=tuple(messages),
        sampling=sampling,
        tools=specs,
        tool_choice=choice,
        parallel_tool_calls=flag(body, "parallel_tool_calls", default=True),
        keep_alive=keep_alive(body),
        response_format=text_format(body.get("text")),
        reasoning=reasoning(body.get("reasoning")),
    )
    return ResponsesCall(
        chat=chat,
        stream=flag(body, "stream"),
        store=flag(body, "store", default=True),
        input_items=tuple(own),
        previous_response_id=previous,
        echo=_echo(body, sampling, instructions),
        tool_names=names,
        include=include,
    )


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Features that would silently do something else here: refused, with what to do."""
    if body.get("background") is True:
        raise bad(
            "Background responses are not supported; send the request and wait, or stream it.",
            "background",
        )
    if body.get("conversation") is not None:
        raise bad(
            "Conversations are not supported; chain turns with previous_response_id or "
            "send the history in 'input'.",
            "conversation",
        )
    if body.get("prompt") is not None:
        raise bad(
            "Stored prompt templates are not supported; send 'instructions' and 'input'.", "prompt"
        )
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise bad("'truncation' must be auto or disabled.", "truncation")


def _history(previous: str | None, store: ResponseStore | None) -> list[Item]:
    if previous is None:
        return []
    found = store.conversation(previous) if store is not None else None
    if found is None:
        raise PreviousResponseNotFound(
            f"Previous response with id '{previous}' not found.",
            "Responses are kept in memory while the server runs (store: true), a bounded "
            "number of them; send the whole history in 'input' instead.",
            param="previous_response_id",
        )
    return found


def own_items(value: Any, store: ResponseStore | None, *, required: bool) -> list[Item]:
    """``input`` as a list of items: a string is one user message; ``item_reference``s are
    replaced by the stored items they name."""
    if value is None and not required:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or (required and not value):
        raise bad("'input' must be a string or a non-empty array of items.", "input")
    if len(value) > MAX_MESSAGES:
        raise bad(f"'input' holds more than {MAX_MESSAGES} items.", "input")
    out = []
    for i, raw in enumerate(value):
        item = obj(raw, f"input[{i}]")
        if item.get("type") == "item_reference":
            item = _referenced(item, store, f"input[{i}]")
        out.append(item)
    return out


def _referenced(item: Mapping[str, Any], store: ResponseStore | None, param: str) -> Item:
    ref = item.get("id")
    found = store.find_item(ref) if store is not None and isinstance(ref, str) else None
    if found is None:
        raise bad(f"Item with id {ref!r} not found among the stored responses.", f"{param}.id")
    return found


def text_format(value: Any) -> Mapping[str, Any] | None:
    """``text.format`` as the runtime's ``response_format`` (the chat API's shape)."""
    if value is None:
        return None
    fmt = obj(value, "text").get("format")
    if fmt is None:
        return None
    fmt = obj(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = obj(fmt.get("schema"), "text.format.schema")
        spec = {
            "name": fmt.get("name") or "response",
            "schema": schema,
            "strict": fmt.get("strict") is True,
        }
        return {"type": "json_schema", "json_schema": spec}
    raise bad("'text.format.type' must be text, json_object or json_schema.", "text.format.type")


def reasoning(value: Any) -> Reasoning:
    if value is None:
        return Reasoning()
    effort = obj(value, "reasoning").get("effort")
    if effort is None:
        return Reasoning()
    if effort not in EFFORTS:
        raise bad(f"'reasoning.effort' must be one of {', '.join(EFFORTS)}.", "reasoning.effort")
    if effort == "none":
        return Reasoning(enabled=False)
    return Reasoning(enabled=True, effort="high" if effort == "xhigh" else effort)


def _sampling(body: Mapping[str, Any], include: frozenset[str]) -> SamplingParams:
    """OpenAI's sampling fields, and llama-server's extensions that map onto ours. Logprobs
    come with ``include: ["message.output_text.logprobs"]``, ``top_logprobs`` alternatives."""
    defaults = SamplingParams()
    seed = integer(body, "seed", -(2**63), 2**63 - 1)
    top_k = integer(body, "top_k", 0, 100_000)
    top = integer(body, "top_logprobs", 0, 20)
    logprobs = (top or 0) if LOGPROBS in include else None
    return SamplingParams(
        max_tokens=max_tokens(body, "max_output_tokens"),
        temperature=number(body, "temperature", 0, 2, defaults.temperature) or 0.0,
        top_p=number(body, "top_p", 0, 1, defaults.top_p) or defaults.top_p,
        top_k=top_k if top_k is not None else defaults.top_k,
        min_p=number(body, "min_p", 0, 1, defaults.min_p) or 0.0,
        seed=seed,
        stop=stop_list(body.get("stop"), "stop"),
        logprobs=logprobs,
    )


def _include(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad("'include' must be an array of strings.", "include")
    return frozenset(value)


def _echo(
    body: Mapping[str, Any], sampling: SamplingParams, instructions: str | None
) -> dict[str, Any]:
    """What a Response object repeats of its request (clients and SDKs read these back)."""
    metadata = body.get("metadata")
    if metadata is not None:
        obj(metadata, "metadata")
    raw = body.get("reasoning")
    reason: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    return {
        "instructions": instructions,
        "max_output_tokens": sampling.max_tokens,
        "metadata": dict(metadata or {}),
        "parallel_tool_calls": flag(body, "parallel_tool_calls", default=True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reason.get("effort"), "summary": reason.get("summary")},
        "store": flag(body, "store", default=True),
        "temperature": sampling.temperature,
        "text": {"format": _format_echo(body.get("text"))},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": list(body.get("tools") or []),
        "top_p": sampling.top_p,
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }


def _format_echo(value: Any) -> Any:
    fmt = value.get("format") if isinstance(value, Mapping) else None
    return fmt if isinstance(fmt, Mapping) else {"type": "text"}
