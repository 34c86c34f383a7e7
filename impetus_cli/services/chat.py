"""The state of an `impetus chat` conversation, apart from the terminal.

``ChatSession`` keeps the messages and settings and interprets slash commands; a backend
(in-process manager or a running server) turns the messages into a stream of
``GenerationChunk``, the record the engines emit. Nothing here prints: commands/chat.py renders,
so this module is tested without a terminal.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.summary import decode_rate
from impetus_cli.runtime.types import ChatMessage, ChatRequest, GenerationChunk, SamplingParams

if TYPE_CHECKING:
    from impetus_cli.client import ImpetusClient
    from impetus_cli.runtime.manager import ModelManager

HELP = """\
/system TEXT       set the system prompt (and start over)
/reset             forget the conversation (keeps the system prompt)
/model NAME        switch model
/temperature X     set the sampling temperature
/max_tokens N      cap the length of a reply (0: the default)
/save FILE         save the conversation (.md for Markdown, otherwise JSON)
/load FILE         load a conversation saved as JSON
/help              this list
/exit              leave (Ctrl-D works too)
Multi-line input: start and end with \"\"\", or end a line with a backslash.
Ctrl-C stops a reply; it does not end the chat."""


@dataclass(frozen=True)
class CommandResult:
    """What a slash command asks the terminal to do."""

    message: str = ""
    exit: bool = False


class Backend(Protocol):
    def stream(
        self,
        model: str,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
    ) -> Iterator[GenerationChunk]: ...

    def is_base_model(self, model: str) -> bool:
        """A pretrained model that does not follow chat turns (False when unknown)."""
        ...


@dataclass
class ChatSession:
    model: str
    system: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = None
    messages: list[ChatMessage] = field(default_factory=list)

    def conversation(self) -> list[ChatMessage]:
        head = [ChatMessage(role="system", content=self.system)] if self.system else []
        return head + self.messages

    def add_user(self, text: str) -> None:
        self.messages.append(ChatMessage(role="user", content=text))

    def add_assistant(self, text: str) -> None:
        self.messages.append(ChatMessage(role="assistant", content=text))

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens)

    def command(self, line: str) -> CommandResult:
        """Interpret one slash command; raises ImpetusError for a bad one."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit", "/bye"):
            return CommandResult(exit=True)
        if name == "/help":
            return CommandResult(HELP)
        if name == "/reset":
            self.messages.clear()
            return CommandResult("Conversation cleared.")
        if name == "/system":
            self.system = arg or None
            self.messages.clear()
            return CommandResult("System prompt set." if arg else "System prompt removed.")
        if name == "/model":
            if not arg:
                return CommandResult(f"Model: {self.model}")
            self.model = arg
            return CommandResult(f"Model: {arg}")
        if name == "/temperature":
            return CommandResult(self._set_temperature(arg))
        if name == "/max_tokens":
            try:
                self.max_tokens = int(arg) or None
            except ValueError:
                raise ImpetusError(
                    "/max_tokens needs a whole number, e.g. /max_tokens 256"
                ) from None
            return CommandResult(f"Max tokens: {self.max_tokens or 'the default'}")
        if name == "/save":
            return CommandResult(f"Saved to {self.save(Path(_need(arg, '/save FILE')))}")
        if name == "/load":
            self.load(Path(_need(arg, "/load FILE")))
            return CommandResult(f"Loaded {len(self.messages)} messages.")
        raise ImpetusError(f"Unknown command {name}", "Type /help for the list.")

    def _set_temperature(self, arg: str) -> str:
        try:
            value = float(arg)
        except ValueError:
            raise ImpetusError("/temperature needs a number, e.g. /temperature 0.2") from None
        if not 0 <= value <= 2:
            raise ImpetusError("Temperature must be between 0 and 2.")
        self.temperature = value
        return f"Temperature: {value}"

    def save(self, path: Path) -> Path:
        path = path.expanduser()
        if path.suffix.lower() in (".md", ".markdown"):
            parts = [f"# Chat with {self.model}\n"]
            for msg in self.conversation():
                parts.append(f"## {msg.role}\n\n{msg.content or ''}\n")
            path.write_text("\n".join(parts), encoding="utf-8")
        else:
            data = {
                "model": self.model,
                "temperature": self.temperature,
                "messages": [{"role": m.role, "content": m.content} for m in self.conversation()],
            }
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    def load(self, path: Path) -> None:
        try:
            data = json.loads(path.expanduser().read_text(encoding="utf-8"))
            raw = data["messages"]
            messages = [
                ChatMessage(role=m["role"], content=str(m.get("content") or "")) for m in raw
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ImpetusError(
                f"Cannot load {path}: {exc}", "Load a file written by /save x.json."
            ) from exc
        self.system = next((m.content for m in messages if m.role == "system"), None)
        self.messages = [m for m in messages if m.role in ("user", "assistant")]
        self.model = str(data.get("model") or self.model)


def _need(arg: str, usage: str) -> str:
    if not arg:
        raise ImpetusError(f"Usage: {usage}")
    return arg


class LocalBackend:
    """Runs the model in this process through the manager."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def stream(
        self,
        model: str,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
    ) -> Iterator[GenerationChunk]:
        request = ChatRequest(model=model, messages=tuple(messages), sampling=sampling)
        generation = self.manager.start_chat(request, cancel)
        try:
            yield from generation
        finally:
            generation.close()

    def is_base_model(self, model: str) -> bool:
        return self.manager.info(self.manager.resolve(model)).base_model


class RemoteBackend:
    """Talks to a running `impetus serve` (or any OpenAI-compatible server)."""

    def __init__(self, client: ImpetusClient):
        self.client = client

    def stream(
        self,
        model: str,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        cancel: threading.Event,
    ) -> Iterator[GenerationChunk]:
        payload = [{"role": m.role, "content": m.content} for m in messages]
        start = time.perf_counter()
        first = last = 0.0
        usage: dict[str, Any] = {}
        finish: str | None = None
        extra = {"max_tokens": sampling.max_tokens} if sampling.max_tokens else {}
        for event in self.client.chat_stream(
            model,
            payload,
            temperature=sampling.temperature,
            stream_options={"include_usage": True},
            **extra,
        ):
            if cancel.is_set():
                finish = "cancelled"
                break
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
                if text:
                    last = time.perf_counter()
                    first = first or last
                    yield GenerationChunk(text=text)
        completion = int(usage.get("completion_tokens") or 0)
        end = time.perf_counter()
        yield GenerationChunk(
            finish_reason=finish
            if finish in ("stop", "length", "tool_calls", "cancelled")
            else "stop",  # type: ignore[arg-type]
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=completion,
            ttft_s=(first or end) - start,
            generation_tps=decode_rate(completion, first, last),
        )

    def is_base_model(self, model: str) -> bool:
        entry = next((m for m in self.client.models() if m.get("id") == model), {})
        return bool(entry.get("base_model"))
