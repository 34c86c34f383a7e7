"""OpenAI Responses: the runtime's stream -> Response objects and their SSE events.

One state machine builds the output items (``reasoning``, ``message``, ``function_call``,
``custom_tool_call``) from the chunks and says what happened as events; a whole (non-streamed)
reply runs the same machine silently, so both carry the same items. Each event is an
``event: <type>`` line and a ``data:`` line whose JSON repeats the type and has a
``sequence_number`` counting from 0. A stream ends with ``response.completed``,
``response.incomplete`` (the reply reached max_output_tokens) or ``response.failed``, never
with ``[DONE]`` (Codex treats a stream without one of these as broken).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.summary import StreamSummary
from impetus_cli.runtime.types import GenerationChunk, ToolCall, ToolCallDelta
from impetus_cli.server.http import dumps
from impetus_cli.server.protocols.openai_render import TokenBytes, chat_logprobs
from impetus_cli.server.protocols.responses_items import encode_reasoning
from impetus_cli.server.protocols.responses_parse import ResponsesCall
from impetus_cli.server.protocols.responses_tools import CUSTOM_INPUT, ToolName

Json = dict[str, Any]
OnDone = Callable[[Json], None]
SUMMARIES = ("auto", "concise", "detailed")
NOTHING_HELD: tuple[str, str, list[Json]] = ("", "", [])


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(prompt: int, final: GenerationChunk | None, reasoning_tokens: int) -> Json:
    f = final or GenerationChunk()
    prompt = f.prompt_tokens or prompt  # a remote model's count arrives with the end
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": f.cached_tokens},
        "output_tokens": f.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, f.completion_tokens)},
        "total_tokens": prompt + f.completion_tokens,
    }


def failure(exc: ImpetusError) -> Json:
    """A Response's ``error``: OpenAI's codes are server_error, rate_limit_exceeded, ..."""
    code = exc.code or ("server_error" if exc.status >= 500 else "invalid_request")
    return {"code": code, "message": exc.message}


class ResponsesRenderer:
    """One Response, whole or as events; ``on_done`` receives the final Response object
    (completed, incomplete or failed), e.g. to keep it for ``previous_response_id``."""

    media_type = "text/event-stream"
    keep_chunks = True  # a whole reply is rebuilt from its chunks by the same machine

    def __init__(
        self,
        call: ResponsesCall,
        model: str,
        prompt_tokens: int,
        on_done: OnDone | None = None,
        piece: TokenBytes | None = None,
    ):
        self.call, self.model, self.prompt_tokens = call, model, prompt_tokens
        self.piece = piece  # a token's bytes, for logprobs
        # Clients that ask for a reasoning summary (Codex) show only that: ours is the text.
        self.summarize = call.echo.get("reasoning", {}).get("summary") in SUMMARIES
        self.on_done = on_done
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.seq = 0
        self.quiet = False  # building a whole reply: no events
        self.output: list[Json] = []
        self.open: int | None = None  # output index of the open message or reasoning item
        self.calls: dict[str, int] = {}  # call id -> output index
        self.call_ids: dict[int, str] = {}  # the runtime's call index -> call id
        self.held: tuple[str, str, list[Json]] = NOTHING_HELD  # whitespace before an item
        self.reasoning_tokens = 0

    # -- the Response object ---------------------------------------------------------------

    def response(self, status: str, **extra: Any) -> Json:
        echo = dict(self.call.echo)
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "model": self.model,
            "output": copy.deepcopy(self.output) if status != "in_progress" else [],
            "service_tier": "default",
            "usage": None,
            **echo,
            **extra,
        }

    def _event(self, kind: str, **fields: Any) -> list[bytes]:
        if self.quiet:
            return []
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return [f"event: {kind}\ndata: {dumps(data)}\n\n".encode()]

    # -- Renderer ------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        shell = self.response("in_progress")
        return self._event("response.created", response=shell) + self._event(
            "response.in_progress", response=shell
        )

    def chunk(self, chunk: GenerationChunk) -> list[bytes]:
        out: list[bytes] = []
        if chunk.reasoning:
            if not chunk.text:
                self.reasoning_tokens += len(chunk.token_ids)
            out += self._text("reasoning", chunk.reasoning)
        if chunk.text:
            out += self._text("message", chunk.text, self._logprobs(chunk))
        for delta in chunk.tool_call_deltas:
            out += self._call_delta(delta)
        for call in chunk.tool_calls:
            out += self._call_done(call)
        return out

    def end(self, summary: StreamSummary) -> list[bytes]:
        out = self._close_all()
        status, final = self._final(summary)
        return out + self._event(f"response.{status}", response=final)

    def error(self, exc: ImpetusError) -> list[bytes]:
        final = self.response("failed", error=failure(exc))
        if self.on_done is not None:
            self.on_done(final)
        return self._event("response.failed", response=final)

    def heartbeat(self) -> list[bytes]:
        """A repeat of ``response.in_progress``: a real event that every client ignores, so a
        long prompt evaluation does not look like a dead stream."""
        return self._event("response.in_progress", response=self.response("in_progress"))

    def body(self, summary: StreamSummary) -> Json:
        self.quiet = True
        for chunk in summary.chunks:
            self.chunk(chunk)
        self._close_all()
        return self._final(summary)[1]

    def _final(self, summary: StreamSummary) -> tuple[str, Json]:
        extra: Json = {
            "usage": usage(self.prompt_tokens, summary.final, self.reasoning_tokens),
            "completed_at": int(time.time()),
        }
        status = "completed"
        if summary.finish_reason == "length":
            status = "incomplete"
            extra["incomplete_details"] = {"reason": "max_output_tokens"}
        final = self.response(status, **extra)
        if self.on_done is not None:
            self.on_done(final)
        return status, final

    # -- message and reasoning items -------------------------------------------------------

    def _logprobs(self, chunk: GenerationChunk) -> list[Json]:
        if not chunk.logprobs or self.piece is None:
            return []
        return list(chat_logprobs([chunk], self.piece)["content"])

    def _text(self, kind: str, text: str, logprobs: list[Json] | None = None) -> list[bytes]:
        out: list[bytes] = []
        logprobs = logprobs or []
        if self.open is None or self.output[self.open]["type"] != kind:
            held_kind, held_text, held_logprobs = self.held
            if held_kind == kind:
                text, logprobs = held_text + text, held_logprobs + logprobs
            # No item for whitespace alone (models write newlines between calls): it waits for
            # the text it belongs to, and is dropped if a call or the end comes first.
            self.held = (kind, text, logprobs) if not text.strip() else NOTHING_HELD
            if not text.strip():
                return []
            out += self._close_open()
            out += self._open(kind)
        index = self.open
        assert index is not None
        item = self.output[index]
        part = item["content"][0]
        part["text"] += text
        name = "output_text" if kind == "message" else "reasoning_text"
        extra: Json = {}
        if kind == "message":
            part["logprobs"] += logprobs
            extra["logprobs"] = logprobs
        where = {"item_id": item["id"], "output_index": index}
        out += self._event(f"response.{name}.delta", content_index=0, delta=text, **where, **extra)
        if kind == "reasoning" and item["summary"]:
            item["summary"][0]["text"] += text
            out += self._event(
                "response.reasoning_summary_text.delta", summary_index=0, delta=text, **where
            )
        return out

    def _open(self, kind: str) -> list[bytes]:
        if kind == "message":
            item: Json = {
                "id": new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            part: Json = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {
                "id": new_id("rs"),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            part = {"type": "reasoning_text", "text": ""}
        self.output.append(item)
        self.open = index = len(self.output) - 1
        out = self._event("response.output_item.added", output_index=index, item=item)
        item["content"].append(part)
        where = {"item_id": item["id"], "output_index": index}
        out += self._event("response.content_part.added", content_index=0, part=part, **where)
        if kind == "reasoning" and self.summarize:
            summary: Json = {"type": "summary_text", "text": ""}
            item["summary"].append(summary)
            out += self._event(
                "response.reasoning_summary_part.added", summary_index=0, part=summary, **where
            )
        return out

    def _close_open(self) -> list[bytes]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        item = self.output[index]
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if item["type"] == "message":
            out = self._event(
                "response.output_text.done", text=part["text"], logprobs=part["logprobs"], **where
            )
        else:
            out = self._event("response.reasoning_text.done", text=part["text"], **where)
            out += self._summary_done(item, index)
            if "reasoning.encrypted_content" in self.call.include:
                item["encrypted_content"] = encode_reasoning(part["text"])
        out += self._event("response.content_part.done", part=part, **where)
        item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _summary_done(self, item: Json, index: int) -> list[bytes]:
        if not item["summary"]:
            return []
        summary = item["summary"][0]
        where = {"item_id": item["id"], "output_index": index, "summary_index": 0}
        out = self._event("response.reasoning_summary_text.done", text=summary["text"], **where)
        return out + self._event("response.reasoning_summary_part.done", part=summary, **where)

    # -- calls -----------------------------------------------------------------------------

    def _tool(self, name: str) -> ToolName:
        return self.call.tool_names.get(name) or ToolName(name)

    def _call_delta(self, delta: ToolCallDelta) -> list[bytes]:
        out: list[bytes] = []
        if delta.id is not None:
            out += self._open_call(delta.id, delta.name or "")
            self.call_ids[delta.index] = delta.id
        call_id = self.call_ids.get(delta.index)
        if call_id is None or not delta.arguments:
            return out
        index = self.calls[call_id]
        item = self.output[index]
        if item["type"] == "custom_tool_call":
            return out  # its text is JSON-escaped in the arguments: sent whole when complete
        item["arguments"] += delta.arguments
        return out + self._event(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=index,
            delta=delta.arguments,
        )

    def _open_call(self, call_id: str, flat: str) -> list[bytes]:
        out = self._close_open()
        self.held = NOTHING_HELD
        tool = self._tool(flat)
        item: Json
        if tool.custom:
            item = {
                "id": new_id("ctc"),
                "type": "custom_tool_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": tool.name,
                "input": "",
            }
        else:
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": tool.name,
                "arguments": "",
            }
        if tool.namespace is not None:
            item["namespace"] = tool.namespace
        self.output.append(item)
        self.calls[call_id] = index = len(self.output) - 1
        return out + self._event("response.output_item.added", output_index=index, item=item)

    def _call_done(self, call: ToolCall) -> list[bytes]:
        out = [] if call.id in self.calls else self._open_call(call.id, call.name)
        index = self.calls[call.id]
        item = self.output[index]
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "custom_tool_call":
            item["input"] = custom_input(call.arguments)
            out += self._event(
                "response.custom_tool_call_input.delta", delta=item["input"], **where
            )
            out += self._event("response.custom_tool_call_input.done", input=item["input"], **where)
        else:
            item["arguments"] = call.arguments or "{}"
            out += self._event(
                "response.function_call_arguments.done",
                name=item["name"],
                arguments=item["arguments"],
                **where,
            )
        item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _close_all(self) -> list[bytes]:
        """At the end: the open text item closes; a call that never completed (the reply was
        cut inside it) ends as incomplete."""
        out = self._close_open()
        for index in sorted(self.calls.values()):
            item = self.output[index]
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
                out += self._event("response.output_item.done", output_index=index, item=item)
        return out


def custom_input(arguments: str) -> str:
    """A custom tool's text from the function-style arguments the model wrote."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return arguments
    if isinstance(value, Mapping) and isinstance(value.get(CUSTOM_INPUT), str):
        return str(value[CUSTOM_INPUT])
    return arguments
