"""OpenAI Responses input items -> the runtime's chat messages.

A conversation arrives as items: messages, the model's earlier ``function_call`` /
``custom_tool_call`` and ``reasoning`` items, and the client's ``*_output`` items. The items of
one assistant turn (reasoning, text, calls) become one assistant message; each output becomes
a tool message. Items of hosted tools (web search and the like) were never the model's here and
are left out; an item type this API does not have is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.runtime.types import ChatMessage, ToolCall
from impetus_cli.server.protocols.fields import bad, obj
from impetus_cli.server.protocols.openai_parse import image_url
from impetus_cli.server.protocols.responses_tools import CUSTOM_INPUT, ToolName, flat_name

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Our own reasoning items carry their text here, so a client that replays only this opaque
# field (store: false, include reasoning.encrypted_content) still gives it back.
ENCRYPTED_PREFIX = "impetus.v1:"
HOSTED_ITEMS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "tool_search_call",
        "tool_search_output",
        "compaction",
    }
)
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def encode_reasoning(text: str) -> str:
    return ENCRYPTED_PREFIX + base64.b64encode(text.encode()).decode("ascii")


def decode_reasoning(value: Any) -> str:
    """Our own ``encrypted_content`` back to text; anyone else's is opaque: ""."""
    if not isinstance(value, str) or not value.startswith(ENCRYPTED_PREFIX):
        return ""
    try:
        return base64.b64decode(value[len(ENCRYPTED_PREFIX) :], validate=True).decode()
    except (binascii.Error, ValueError):
        return ""


@dataclass
class _Turn:
    """One assistant turn while its items are read."""

    texts: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)

    def message(self) -> ChatMessage:
        return ChatMessage(
            role="assistant",
            content="".join(self.texts) if self.texts or not self.calls else None,
            tool_calls=tuple(self.calls),
            reasoning="\n".join(self.reasoning) or None,
        )


class _Reader:
    def __init__(self, names: Mapping[str, ToolName]):
        self.flat = {(v.namespace, v.name): k for k, v in names.items()}
        self.out: list[ChatMessage] = []
        self.turn: _Turn | None = None
        self.call_names: dict[str, str] = {}

    def assistant(self, starts_text: bool) -> _Turn:
        # Text after calls is a later turn (the calls' outputs would normally sit between).
        if self.turn is not None and starts_text and self.turn.calls:
            self.flush()
        if self.turn is None:
            self.turn = _Turn()
        return self.turn

    def flush(self) -> None:
        if self.turn is not None:
            self.out.append(self.turn.message())
            self.turn = None

    def read(self, item: Mapping[str, Any], param: str) -> None:
        kind = item.get("type") or ("message" if "role" in item else None)
        if not isinstance(kind, str):
            raise bad("Every input item needs a string 'type'.", f"{param}.type")
        if kind == "message":
            self.message(item, param)
        elif kind in ("function_call", "custom_tool_call"):
            self.call(item, param, custom=kind == "custom_tool_call")
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self.output(item, param)
        elif kind == "reasoning":
            text = _reasoning_text(item, param)
            if text:
                self.assistant(starts_text=True).reasoning.append(text)
        elif kind not in HOSTED_ITEMS:
            raise bad(f"Unsupported input item type {kind!r}.", f"{param}.type")

    def message(self, item: Mapping[str, Any], param: str) -> None:
        raw_role = item.get("role")
        role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise bad(
                f"Unknown role {item.get('role')!r}; use developer, system, user or assistant.",
                f"{param}.role",
            )
        content, images = parts(item.get("content"), f"{param}.content")
        if role == "assistant":
            self.assistant(starts_text=True).texts.append(content)
            return
        self.flush()
        self.out.append(ChatMessage(role=role, content=content, images=images))  # type: ignore[arg-type]

    def call(self, item: Mapping[str, Any], param: str, *, custom: bool) -> None:
        name, space = item.get("name"), item.get("namespace")
        call_id = item.get("call_id") or item.get("id")
        if not isinstance(name, str) or not isinstance(call_id, str):
            raise bad("A call item needs a string 'name' and 'call_id'.", param)
        space = space if isinstance(space, str) else None
        flat = self.flat.get((space, name), flat_name(space, name))
        if custom:
            raw = item.get("input")
            args = json.dumps({CUSTOM_INPUT: raw if isinstance(raw, str) else ""})
        else:
            raw = item.get("arguments", "{}")
            args = raw if isinstance(raw, str) else json.dumps(raw)
        self.call_names[call_id] = flat
        self.assistant(starts_text=False).calls.append(ToolCall(call_id, flat, args or "{}"))

    def output(self, item: Mapping[str, Any], param: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise bad("A call output needs a string 'call_id'.", f"{param}.call_id")
        content, images = parts(item.get("output"), f"{param}.output")
        self.flush()
        self.out.append(
            ChatMessage(
                role="tool",
                content=content,
                tool_call_id=call_id,
                name=self.call_names.get(call_id),
                images=images,
            )
        )


def messages(
    history: Sequence[Mapping[str, Any]],
    names: Mapping[str, ToolName],
    instructions: str | None = None,
    stored: int = 0,
) -> list[ChatMessage]:
    """The conversation as chat messages, ``instructions`` first as a system message. The
    first ``stored`` items come from earlier turns; errors name the request's own items."""
    reader = _Reader(names)
    if instructions:
        reader.out.append(ChatMessage(role="system", content=instructions))
    for i, item in enumerate(history):
        param = f"input[{i - stored}]" if i >= stored else "previous_response_id"
        reader.read(obj(item, param), param)
    reader.flush()
    if not any(m.role != "system" for m in reader.out):
        raise bad("'input' holds no message for the model to answer.", "input")
    return reader.out


def parts(value: Any, param: str) -> tuple[str, tuple[str, ...]]:
    """A string, or an array of content parts, as text and images."""
    if value is None:
        return "", ()
    if isinstance(value, str):
        return value, ()
    if not isinstance(value, list):
        raise bad(f"'{param}' must be a string or an array of content parts.", param)
    texts: list[str] = []
    images: list[str] = []
    for i, raw in enumerate(value):
        part = obj(raw, f"{param}[{i}]")
        kind = part.get("type")
        if kind in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise bad("A text part needs a string 'text'.", f"{param}[{i}].text")
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind == "input_image":
            images.append(_image(part, f"{param}[{i}]"))
        else:
            raise bad(
                f"Unsupported content part type {kind!r}; send input_text or input_image "
                "(files are not supported: send their text).",
                f"{param}[{i}].type",
            )
    return "\n".join(texts), tuple(images)


def _image(part: Mapping[str, Any], param: str) -> str:
    url = part.get("image_url")
    if isinstance(url, Mapping):  # the chat API's {"url": ...}, seen from mixed clients
        url = url.get("url")
    if url is None and part.get("file_id") is not None:
        raise bad("Images by file_id are not supported; send a data URL.", f"{param}.file_id")
    return image_url(url, f"{param}.image_url")


def _reasoning_text(item: Mapping[str, Any], param: str) -> str:
    """The reasoning a client replays: its text, else its summary, else our own opaque copy."""
    for key in ("content", "summary"):
        value = item.get(key)
        if isinstance(value, list) and value:
            return parts(value, f"{param}.{key}")[0]
    return decode_reasoning(item.get("encrypted_content"))
