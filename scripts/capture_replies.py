"""Minimal valid replies in each API dialect, for the capture server (scripts/capture_server.py).

A reply is either text or one tool call. Each ``*_stream`` function returns the exact events a
real server of that dialect sends (Anthropic Messages SSE, OpenAI Responses SSE with
``sequence_number``, OpenAI chat chunks, Ollama NDJSON lines); each ``*_body`` function returns
the non-streaming JSON body. ``choose_reply`` decides, from a request body alone, whether the
next turn should be a tool call: the capture server is stateless, so "first turn" means "the
conversation holds no tool result yet".
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

# Tools the capture server prefers to call, in order: a shell command gives the most
# representative follow-up turn (a tool result with real output).
PREFERRED_TOOLS = (
    "Bash",
    "shell_command",
    "exec_command",
    "shell",
    "execute_command",
    "run_commands",
    "run_terminal_command",
    "Read",
    "read_file",
    "List",
    "list_files",
)
SHELL_COMMAND = "ls -a"


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool the client offered, with arguments that fit its schema."""

    name: str
    arguments: Json
    call_id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:20])


@dataclass(frozen=True)
class Reply:
    """What the capture server answers: text, or a tool call (then text is empty)."""

    text: str = ""
    tool: ToolCall | None = None


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _value_for(name: str, schema: Json) -> Any:
    """A plausible value for one required argument, chosen by its name and JSON type."""
    kind = schema.get("type")
    lowered = name.lower()
    if kind == "array":
        if lowered == "command":  # one argv, as Codex's legacy `shell` tool takes it
            return ["bash", "-lc", SHELL_COMMAND]
        return [SHELL_COMMAND] if "command" in lowered else []
    if kind == "boolean":
        return False
    if kind in ("integer", "number"):
        return 1
    if kind == "object":
        return {}
    if schema.get("enum"):
        return schema["enum"][0]
    if "command" in lowered or lowered == "cmd":
        return SHELL_COMMAND
    if "path" in lowered or "file" in lowered or "dir" in lowered:
        return "."
    return "List the files of the working directory"


def tool_arguments(schema: Json) -> Json:
    """Arguments for a tool: every required property filled, plus a command when one exists."""
    properties = schema.get("properties") or {}
    wanted = list(schema.get("required") or [])
    for extra in ("command", "cmd", "description"):
        if extra in properties and extra not in wanted:
            wanted.append(extra)
    return {name: _value_for(name, properties.get(name) or {}) for name in wanted}


def offered_tools(body: Json) -> dict[str, Json]:
    """Tool name -> JSON schema of its arguments, in any dialect's shape."""
    found: dict[str, Json] = {}
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        spec: Json = tool["function"] if isinstance(tool.get("function"), dict) else tool
        name = spec.get("name")
        schema = spec.get("input_schema") or spec.get("parameters") or {}
        if isinstance(name, str):
            found[name] = schema if isinstance(schema, dict) else {}
    return found


def has_tool_result(body: Json) -> bool:
    """Whether the conversation already carries a tool result (any dialect)."""
    items = list(body.get("messages") or []) + list(_as_list(body.get("input")))
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("role") == "tool" or item.get("type") == "function_call_output":
            return True
        content = item.get("content")
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "tool_result" for part in content
        ):
            return True
    return False


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def choose_reply(body: Json, text: str, want_tool: bool) -> Reply:
    """A tool call when asked for, offered, and not yet answered; text otherwise."""
    if want_tool and not has_tool_result(body):
        tools = offered_tools(body)
        for name in PREFERRED_TOOLS:
            if name in tools:
                return Reply(tool=ToolCall(name, tool_arguments(tools[name])))
    return Reply(text=text)


def rough_tokens(body: Any) -> int:
    """A stand-in token count (characters / 4), so usage fields carry plausible numbers."""
    return max(1, len(json.dumps(body)) // 4)


# --- Anthropic Messages -------------------------------------------------------------------


def _anthropic_block(reply: Reply) -> Json:
    if reply.tool is not None:
        return {
            "type": "tool_use",
            "id": "toolu_" + reply.tool.call_id[5:],
            "name": reply.tool.name,
            "input": reply.tool.arguments,
        }
    return {"type": "text", "text": reply.text}


def anthropic_body(reply: Reply, model: str, input_tokens: int) -> Json:
    """The non-streaming /v1/messages body."""
    stop = "tool_use" if reply.tool is not None else "end_turn"
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_anthropic_block(reply)],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": 8,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def anthropic_stream(reply: Reply, model: str, input_tokens: int) -> list[tuple[str, Json]]:
    """(event name, data) pairs: message_start ... message_stop, as the Messages API streams."""
    body = anthropic_body(reply, model, input_tokens)
    start = dict(body, content=[], stop_reason=None, usage=dict(body["usage"], output_tokens=1))
    block = body["content"][0]
    if reply.tool is not None:
        opening = dict(block, input={})
        delta = {"type": "input_json_delta", "partial_json": json.dumps(reply.tool.arguments)}
    else:
        opening = dict(block, text="")
        delta = {"type": "text_delta", "text": reply.text}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": opening},
        ),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": body["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": 8},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


# --- OpenAI Responses ---------------------------------------------------------------------


def _responses_item(reply: Reply, item_id: str, done: bool) -> Json:
    status = "completed" if done else "in_progress"
    if reply.tool is not None:
        arguments = json.dumps(reply.tool.arguments) if done else ""
        return {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "call_id": reply.tool.call_id,
            "name": reply.tool.name,
            "arguments": arguments,
        }
    content = [_output_text(reply.text)] if done else []
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _output_text(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def responses_body(reply: Reply, model: str, input_tokens: int, item_id: str = "") -> Json:
    """The completed Response object (the non-streaming body, and response.completed's)."""
    item = _responses_item(reply, item_id or _new_id("item_"), done=True)
    return {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [item],
        "error": None,
        "incomplete_details": None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "store": False,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 8,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + 8,
        },
    }


def responses_stream(reply: Reply, model: str, input_tokens: int) -> list[tuple[str, Json]]:
    """(event name, data) pairs from response.created to response.completed, numbered."""
    item_id = _new_id("fc_" if reply.tool is not None else "msg_")
    final = responses_body(reply, model, input_tokens, item_id)
    pending = dict(final, status="in_progress", output=[], usage=None)
    where = {"item_id": item_id, "output_index": 0}
    events: list[Json] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _responses_item(reply, item_id, done=False),
        },
    ]
    if reply.tool is not None:
        arguments = json.dumps(reply.tool.arguments)
        events += [
            dict(where, type="response.function_call_arguments.delta", delta=arguments),
            dict(where, type="response.function_call_arguments.done", arguments=arguments),
        ]
    else:
        part = dict(where, content_index=0)
        events += [
            dict(part, type="response.content_part.added", part=_output_text("")),
            dict(part, type="response.output_text.delta", delta=reply.text, logprobs=[]),
            dict(part, type="response.output_text.done", text=reply.text, logprobs=[]),
            dict(part, type="response.content_part.done", part=_output_text(reply.text)),
        ]
    events += [
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]
    return [(event["type"], dict(event, sequence_number=n)) for n, event in enumerate(events)]


# --- OpenAI chat completions --------------------------------------------------------------


def _chat_tool_calls(tool: ToolCall) -> list[Json]:
    return [
        {
            "index": 0,
            "id": tool.call_id,
            "type": "function",
            "function": {"name": tool.name, "arguments": json.dumps(tool.arguments)},
        }
    ]


def chat_body(reply: Reply, model: str, input_tokens: int) -> Json:
    """The non-streaming chat.completion body."""
    message: Json = {"role": "assistant", "content": reply.text or None}
    if reply.tool is not None:
        message["tool_calls"] = [
            {k: v for k, v in call.items() if k != "index"} for call in _chat_tool_calls(reply.tool)
        ]
    finish = "tool_calls" if reply.tool is not None else "stop"
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": 8,
            "total_tokens": input_tokens + 8,
        },
    }


def chat_stream(reply: Reply, model: str, input_tokens: int, usage: bool) -> list[Json]:
    """chat.completion.chunk objects (the caller adds ``data: [DONE]``)."""
    head = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: Json, finish: str | None = None) -> Json:
        return dict(head, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])

    chunks = [chunk({"role": "assistant", "content": ""})]
    if reply.tool is not None:
        chunks.append(chunk({"tool_calls": _chat_tool_calls(reply.tool)}))
        chunks.append(chunk({}, "tool_calls"))
    else:
        chunks += [chunk({"content": reply.text}), chunk({}, "stop")]
    if usage:
        chunks.append(dict(head, choices=[], usage=chat_body(reply, model, input_tokens)["usage"]))
    return chunks


# --- Ollama -------------------------------------------------------------------------------


def _ollama_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


def _ollama_done(model: str, input_tokens: int) -> Json:
    return {
        "model": model,
        "created_at": _ollama_now(),
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": input_tokens,
        "prompt_eval_duration": 1_000,
        "eval_count": 8,
        "eval_duration": 1_000,
    }


def ollama_chat_lines(reply: Reply, model: str, input_tokens: int, stream: bool) -> list[Json]:
    """/api/chat objects: one per NDJSON line when streaming, else the single last one."""
    message: Json = {"role": "assistant", "content": reply.text}
    if reply.tool is not None:
        message["tool_calls"] = [
            {
                "id": reply.tool.call_id,
                "function": {
                    "index": 0,
                    "name": reply.tool.name,
                    "arguments": reply.tool.arguments,
                },
            }
        ]
    done = _ollama_done(model, input_tokens)
    if not stream:
        return [dict(done, message=message)]
    first = {"model": model, "created_at": _ollama_now(), "message": message, "done": False}
    return [first, dict(done, message={"role": "assistant", "content": ""})]


def ollama_generate_lines(text: str, model: str, input_tokens: int, stream: bool) -> list[Json]:
    """/api/generate objects: the text, then the closing counts."""
    done = dict(_ollama_done(model, input_tokens), response="")
    if not stream:
        return [dict(done, response=text)]
    return [{"model": model, "created_at": _ollama_now(), "response": text, "done": False}, done]
