"""Chat templates: the prompt text for a conversation.

``render_chat`` renders the model's own Jinja chat template (the one its GGUF or tokenizer
config carries) in a sandbox that offers what real templates use (``namespace``, loop controls,
``raise_exception``, ``strftime_now``, ``tojson`` with arguments, list methods), or a known
template for its architecture when the file has none (templating_builtin.py). It passes the
switches reasoning models read (``enable_thinking``, ``thinking``, ``reasoning_effort``) and
replays an assistant turn's reasoning under the keys templates read (``reasoning_content``,
``thinking``). A system prompt is never dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from impetus_cli.errors import EngineError, ImpetusError
from impetus_cli.runtime.replies import tool_dialect
from impetus_cli.runtime.replies.syntax import write_call
from impetus_cli.runtime.templating_builtin import BUILTIN, template_for
from impetus_cli.runtime.types import ChatMessage, Reasoning, ToolSpec

TOOL_PROMPT = """\
# Tools

You may call one or more functions to assist with the user query. The functions are described
below as JSON schemas:
<tools>
{tools}
</tools>

To call a function, answer with the call written exactly in this form (one per call), with the
function's real name and its arguments as a JSON object, and nothing else. For example:
{example}"""

_SAMPLE = {"string": "...", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}


def _tool_json(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


def _example_call(tool: ToolSpec, dialect: str) -> str:
    """A call of the first real tool in the model's own syntax (models copy the example: it
    must name a real function)."""
    props = tool.parameters.get("properties")
    args: dict[str, Any] = {}
    if isinstance(props, Mapping):
        required = tool.parameters.get("required") or list(props)[:1]
        for name in [p for p in required if p in props][:3]:
            spec = props[name] if isinstance(props[name], Mapping) else {}
            enum = spec.get("enum")
            kind = spec.get("type")
            args[name] = (
                enum[0] if enum else _SAMPLE.get(kind if isinstance(kind, str) else "", "...")
            )
    return write_call(dialect, tool.name, args)


def _short_id(call_id: str) -> str:
    """Mistral's templates demand 9-character alphanumeric call ids; ours are longer."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _call_dict(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    try:
        args: Any = json.loads(arguments or "{}")
    except ValueError:
        args = arguments
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _message_dict(msg: ChatMessage, short_ids: bool) -> dict[str, Any]:
    """OpenAI-shaped dict, as HF templates expect (tool-call arguments parsed to objects).
    Keys a template tests with ``in`` (``thinking``, ``tool_calls``) are set only when they
    have a value."""
    fix = _short_id if short_ids else (lambda i: i)
    data: dict[str, Any] = {"role": msg.role, "content": msg.content or ""}
    if msg.tool_calls:
        data["tool_calls"] = [_call_dict(fix(c.id), c.name, c.arguments) for c in msg.tool_calls]
    if msg.tool_call_id:
        data["tool_call_id"] = fix(msg.tool_call_id)
    if msg.name:
        data["name"] = msg.name
    if msg.reasoning and msg.role == "assistant":
        data["reasoning_content"] = msg.reasoning
        data["thinking"] = msg.reasoning
        if msg.tool_calls:
            # gpt-oss refuses a tool-call turn with both: its content is the analysis anyway.
            data["content"] = ""
    return data


def _with_tool_prompt(
    messages: list[dict[str, Any]], tools: Sequence[ToolSpec], dialect: str
) -> list[dict[str, Any]]:
    """Templates that know nothing of tools get them described in the system message, with
    an example in the syntax the model's family writes calls in (DeepSeek's templates have
    call tokens but no tool list; models without a template are taught Hermes)."""
    prompt = TOOL_PROMPT.format(
        tools="\n".join(json.dumps(t, ensure_ascii=False) for t in _tool_json(tools)),
        example=_example_call(tools[0], dialect),
    )
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + prompt}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _tool_results_as_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates without a tool role: results become user turns, calls become text."""
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append(
                {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
            )
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                "<tool_call>\n"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                    ensure_ascii=False,
                )
                + "\n</tool_call>"
                for c in m["tool_calls"]
            )
            out.append(
                {"role": "assistant", "content": ((m["content"] or "") + "\n" + calls).strip()}
            )
        else:
            out.append(m)
    return out


def _merge_consecutive(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Templates that insist on alternating roles (Gemma) get consecutive user or assistant
    turns joined (clients send several user messages in a row)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        prev = out[-1] if out else None
        plain = not m.get("tool_calls") and m["role"] in ("user", "assistant")
        if prev is not None and plain and prev["role"] == m["role"] and not prev.get("tool_calls"):
            out[-1] = {**prev, "content": f"{prev['content']}\n\n{m['content']}"}
        else:
            out.append(m)
    return out


def _environment() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import SandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ImpetusError(
            f"The chat template refused the conversation: {message}", param="messages"
        )

    def tojson(
        value: Any,
        indent: int | None = None,
        ensure_ascii: bool = False,
        separators: Sequence[str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        seps = (str(separators[0]), str(separators[1])) if separators else None
        return json.dumps(
            value, indent=indent, ensure_ascii=ensure_ascii, separators=seps, sort_keys=sort_keys
        )

    # Not the immutable sandbox: real templates keep state in lists (Kimi K2 appends to and
    # pops from a queue of call ids). They only ever see copies we made for this render.
    env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render_jinja(
    template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, **extra: Any
) -> str:
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        return str(
            _environment().from_string(template).render(messages=messages, tools=tools, **extra)
        )
    except SecurityError as exc:
        raise EngineError(
            f"The model's chat template tried something unsafe: {exc}", "Use a trusted model."
        ) from exc
    except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
        # A template fails on inputs its authors did not expect (and inside Jinja with plain
        # Python errors too): the same conversation always fails, so it is a 400, not a 5xx
        # that clients would retry.
        raise ImpetusError(
            f"The model's chat template could not render this conversation: {exc}",
            "Check the messages (tool-call arguments must be JSON objects).",
            param="messages",
        ) from exc


def reasoning_kwargs(reasoning: Reasoning) -> dict[str, Any]:
    """The switches reasoning templates read; none at all means the model's own default.
    Qwen3, GLM and the R1 distills read ``enable_thinking``, DeepSeek V3.1 ``thinking``,
    gpt-oss ``reasoning_effort`` (low, medium or high: it cannot turn reasoning off)."""
    out: dict[str, Any] = {}
    if reasoning.enabled is not None:
        out["enable_thinking"] = reasoning.enabled
        out["thinking"] = reasoning.enabled
    effort = reasoning.effort
    if reasoning.enabled is False:
        effort = "low"
    if effort is not None:
        out["reasoning_effort"] = {"minimal": "low"}.get(effort, effort)
    return out


def render_chat(
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec] = (),
    *,
    template: str | None,
    architecture: str,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    reasoning: Reasoning | None = None,
) -> str:
    """The prompt text for ``messages``, through the model's template or a known fallback."""
    if any(m.images for m in messages):
        raise ImpetusError(
            "This model cannot read images.",
            "Send text only, or use a vision model.",
            param="messages",
        )
    source = template or BUILTIN[template_for(architecture, bos_token)]
    short_ids = "[CALL_ID]" in source or "length != 9" in source
    dicts = [_message_dict(m, short_ids) for m in messages]
    native_tools = template is not None and "tools" in template
    if tools and not native_tools:
        dicts = _with_tool_prompt(dicts, tools, tool_dialect(template, architecture))
    if "tool" not in source:  # the template has no notion of tool results
        dicts = _tool_results_as_user(dicts)
    if "must alternate" in source:
        dicts = _merge_consecutive(dicts)
    return render_jinja(
        source,
        dicts,
        _tool_json(tools) if tools and native_tools else None,
        bos_token=bos_token,
        eos_token=eos_token,
        add_generation_prompt=add_generation_prompt,
        **reasoning_kwargs(reasoning or Reasoning()),
    )
