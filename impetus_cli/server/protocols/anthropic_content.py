"""Anthropic Messages content: ``system`` and ``messages`` -> the runtime's ChatMessages.

``system`` is a string or text blocks (Claude Code's per-request billing line is dropped); a
turn's content is a string or blocks: text, image, text documents, search results, tool_use,
tool_result (string or block content, ``is_error``), thinking replayed by the client; blocks of
tools that Anthropic's servers run are skipped. A ``role: "system"`` message inside
``messages`` is more system prompt before the conversation, and later the
``<system-reminder>`` Claude Code itself sends models without that feature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from impetus_cli.runtime.types import ChatMessage, ToolCall
from impetus_cli.server.protocols.fields import MAX_MESSAGES, bad, obj
from impetus_cli.server.protocols.openai_parse import image_url

# Claude Code opens its system prompt with a line that changes on every request
# ("x-anthropic-billing-header: cc_version=...; cch=...;"). It means nothing to a local model,
# and left in place it would make every turn's prompt differ from its first token on, so no
# turn could reuse the cached prefix of the one before.
BILLING_HEADER = re.compile(r"^x-anthropic-billing-header:[^\n]*(?:\n|$)", re.MULTILINE)
# Blocks of tools that Anthropic's servers run (web search, code execution...), replayed by
# clients in later turns: nothing a local model made or can use, so they are skipped.
SERVER_BLOCKS = frozenset(
    {
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
        "tool_reference",
    }
)


def system_text(value: Any) -> str:
    """The system prompt: a string or an array of text blocks, without the billing line."""
    if value is None:
        return ""
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = [_text_block(block, f"system[{i}]") for i, block in enumerate(value)]
    else:
        raise bad("'system' must be a string or an array of text blocks.", "system")
    kept = (BILLING_HEADER.sub("", text) for text in texts)
    return "\n".join(text for text in kept if text.strip())


def _text_block(raw: Any, param: str) -> str:
    block = obj(raw, param)
    if block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise bad("Expected a text block: {'type': 'text', 'text': '...'}.", param)
    return str(block["text"])


def messages(system: Any, value: Any) -> tuple[ChatMessage, ...]:
    """``system`` and ``messages`` as runtime messages: the system prompt first, each turn's
    tool results as tool messages, consecutive user turns joined (as Anthropic joins them)."""
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty array.", "messages")
    if len(value) > MAX_MESSAGES:
        raise bad(f"'messages' holds more than {MAX_MESSAGES} messages.", "messages")
    prompt, out = system_text(system), _Turns()
    for i, raw in enumerate(value):
        msg, param = obj(raw, f"messages[{i}]"), f"messages[{i}]"
        role = msg.get("role")
        if role == "system":
            text = _plain(msg.get("content"), f"{param}.content")
            if out.empty:  # before the conversation starts, it is more system prompt
                prompt = "\n\n".join(t for t in (prompt, text) if t)
            else:  # later: the context Claude Code itself sends models without this feature
                out.user(ChatMessage("user", f"<system-reminder>\n{text}\n</system-reminder>"))
        elif role == "user":
            _user_turn(out, msg.get("content"), f"{param}.content")
        elif role == "assistant":
            out.add(_assistant_turn(msg.get("content"), f"{param}.content", out.names))
        else:
            raise bad(f"Unknown role {role!r}; use user, assistant or system.", f"{param}.role")
    head = (ChatMessage("system", prompt),) if prompt else ()
    return head + tuple(out.messages)


class _Turns:
    """The runtime messages being built, and the names of the calls made so far (a tool
    result names the function it answers)."""

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self.names: dict[str, str] = {}

    @property
    def empty(self) -> bool:
        return not self.messages

    def add(self, message: ChatMessage) -> None:
        self.messages.append(message)
        self.names.update({c.id: c.name for c in message.tool_calls})

    def user(self, message: ChatMessage) -> None:
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "user":
            content = "\n\n".join(t for t in (last.content, message.content) if t)
            message = replace(last, content=content, images=last.images + message.images)
            self.messages[-1] = message
        else:
            self.messages.append(message)


def _blocks(value: Any, param: str) -> list[Mapping[str, Any]]:
    """Content as a list of blocks: a string is one text block."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise bad(f"'{param}' must be a string or an array of content blocks.", param)
    blocks = [obj(block, f"{param}[{i}]") for i, block in enumerate(value)]
    for i, block in enumerate(blocks):
        if not isinstance(block.get("type"), str):
            raise bad("A content block needs a string 'type'.", f"{param}[{i}].type")
    return blocks


def _plain(value: Any, param: str) -> str:
    """Text-only content (a system message's)."""
    return "\n".join(_text_block(b, f"{param}[{i}]") for i, b in enumerate(_blocks(value, param)))


def _user_turn(out: _Turns, value: Any, param: str) -> None:
    """Tool results become tool messages, in order; text and images around them user turns."""
    texts: list[str] = []
    images: list[str] = []
    added = False
    for i, block in enumerate(_blocks(value, param)):
        where = f"{param}[{i}]"
        if block["type"] == "tool_result":
            if texts or images:
                out.user(ChatMessage("user", "\n".join(texts), images=tuple(images)))
                texts, images = [], []
            out.add(_tool_result(block, where, out.names))
            added = True
        elif block["type"] not in SERVER_BLOCKS and block["type"] != "thinking":
            _media(block, where, texts, images)
    if texts or images or not added:  # an empty user turn is still a turn
        out.user(ChatMessage("user", "\n".join(texts), images=tuple(images)))


def _media(block: Mapping[str, Any], param: str, texts: list[str], images: list[str]) -> None:
    """A text, image, document or search result block, into ``texts`` or ``images``."""
    kind = block["type"]
    if kind == "text":
        texts.append(_text_block(block, param))
    elif kind == "image":
        images.append(_image(block.get("source"), f"{param}.source"))
    elif kind == "document":
        texts.append(_document(block, param))
    elif kind == "search_result":
        found = _plain(block.get("content"), f"{param}.content")
        head = [str(block[k]) for k in ("title", "source") if isinstance(block.get(k), str)]
        texts.append("\n".join([*head, found]))
    else:
        raise bad(f"Unsupported content block type {kind!r}.", f"{param}.type")


def _image(raw: Any, param: str) -> str:
    source = obj(raw, param)
    if source.get("type") == "base64":
        media = source.get("media_type")
        if not isinstance(media, str) or not media.startswith("image/"):
            raise bad("An image needs a media_type such as image/png.", f"{param}.media_type")
        return image_url(f"data:{media};base64,{source.get('data')}", f"{param}.data")
    if source.get("type") == "url":
        return image_url(source.get("url"), f"{param}.url")
    raise bad("An image source must be base64 data or a URL (files are not stored here).", param)


def _document(block: Mapping[str, Any], param: str) -> str:
    source = obj(block.get("source"), f"{param}.source")
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        body = str(source["data"])
    elif source.get("type") == "content":
        body = _plain(source.get("content"), f"{param}.source.content")
    else:
        raise bad(
            "Only text documents can be read here (no PDF or file documents).",
            f"{param}.source.type",
        )
    title = block.get("title")
    return f"{title}\n{body}" if isinstance(title, str) and title else body


def _tool_result(block: Mapping[str, Any], param: str, names: Mapping[str, str]) -> ChatMessage:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad("A tool_result needs the 'tool_use_id' of its call.", f"{param}.tool_use_id")
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool):
        raise bad("'is_error' must be a boolean.", f"{param}.is_error")
    texts: list[str] = []
    images: list[str] = []
    content = block.get("content")
    for i, part in enumerate(_blocks(content, f"{param}.content") if content is not None else []):
        if part["type"] not in SERVER_BLOCKS:
            _media(part, f"{param}.content[{i}]", texts, images)
    text = "\n".join(texts)
    # The runtime's messages have no error flag: the model reads that the call failed.
    return ChatMessage(
        "tool",
        f"Error: {text}" if is_error else text,
        tool_call_id=call_id,
        name=names.get(call_id),
        images=tuple(images),
    )


def _assistant_turn(value: Any, param: str, names: Mapping[str, str]) -> ChatMessage:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    for i, block in enumerate(_blocks(value, param)):
        kind, where = block["type"], f"{param}[{i}]"
        if kind == "text":
            texts.append(_text_block(block, where))
        elif kind == "thinking":
            if not isinstance(block.get("thinking"), str):
                raise bad("A thinking block needs a string 'thinking'.", f"{where}.thinking")
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            calls.append(_tool_use(block, where))
        elif kind not in SERVER_BLOCKS:
            raise bad(f"Unsupported assistant content block {kind!r}.", f"{where}.type")
    return ChatMessage(
        "assistant",
        "\n".join(texts),
        tool_calls=tuple(calls),
        reasoning="\n".join(thinking) or None,
    )


def _tool_use(block: Mapping[str, Any], param: str) -> ToolCall:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise bad("A tool_use block needs a string 'id'.", f"{param}.id")
    if not isinstance(name, str) or not name:
        raise bad("A tool_use block needs a string 'name'.", f"{param}.name")
    if not isinstance(arguments, Mapping):
        raise bad("A tool_use block's 'input' must be an object.", f"{param}.input")
    return ToolCall(call_id, name, json.dumps(arguments, ensure_ascii=False))
