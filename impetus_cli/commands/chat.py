"""`impetus chat [MODEL]`: a streaming chat in the terminal.

In-process through the manager by default, or against a running server with ``--url``. With
stdin piped it answers once in plain text and exits. The reply streams in a worker thread so
that Ctrl-C in the main thread only sets the cancel flag: the engine stops between two tokens
and the chat goes on.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from impetus_cli.commands._options import UrlOpt
from impetus_cli.commands._ui import console, err_console
from impetus_cli.errors import ImpetusError

if TYPE_CHECKING:
    from impetus_cli.runtime.config import Settings
    from impetus_cli.runtime.types import GenerationChunk
    from impetus_cli.services.chat import Backend, ChatSession

PROMPT = ">>> "
CONTINUATION = "... "


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


def chat(
    model: Annotated[
        str | None, typer.Argument(help="Model to chat with (default: built-in).")
    ] = None,
    url: UrlOpt = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0, max=2)] = 0.7,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Cap each reply.")] = None,
    ctx: Annotated[
        int | None, typer.Option("--ctx", help="Context size (in-process only).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads.")] = None,
) -> None:
    """Chat with a model in the terminal (reads one prompt from stdin when piped)."""
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.services.chat import ChatSession

    settings = load_settings({"ctx": ctx, "threads": threads})
    session = ChatSession(
        model=model or settings.default_model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    backend = _backend(url, settings)
    piped = not sys.stdin.isatty()
    _warn_if_base(backend, session.model, piped)
    if piped:
        _answer_once(session, backend, sys.stdin.read())
        return
    _repl(session, backend, settings.home / "chat_history")


def _warn_if_base(backend: Backend, model: str, piped: bool) -> None:
    """Say once that a base (pretrained) model will not follow the conversation."""
    try:
        base = backend.is_base_model(model)
    except ImpetusError:
        return  # an unknown model: the first request says so, with suggestions
    if base:
        style = "" if piped else "[yellow]"
        err_console().print(
            f"{style}{model} is a base model: it continues text and does not follow chat turns, "
            "so its replies ramble (the server stops them when they repeat). For real work pull "
            "an instruct model, e.g. `impetus pull qwen2.5-coder:7b`.",
            highlight=False,
            markup=not piped,
        )


def _backend(url: str | None, settings: Settings) -> Backend:
    from impetus_cli.services.chat import LocalBackend, RemoteBackend

    if url:
        from impetus_cli.client import ImpetusClient

        return RemoteBackend(ImpetusClient(url, api_key=settings.api_key))
    from impetus_cli.runtime.manager import ModelManager

    return LocalBackend(ModelManager(settings))


def _answer_once(session: ChatSession, backend: Backend, prompt: str) -> None:
    """Piped mode: plain text on stdout, nothing else; errors reach stderr via cli.main."""
    if not prompt.strip():
        raise ImpetusError("No prompt on stdin.", 'Try: echo "hello" | impetus chat')
    session.add_user(prompt.strip())
    last = None
    for piece in _Pump(session, backend, threading.Event()):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
        last = piece if piece.finish_reason else last
    sys.stdout.write("\n")
    if last is not None and last.finish_reason == "length":
        why = "it repeated itself" if last.stopped_by == "loop" else "the length limit"
        err_console().print(
            f"(reply cut after {last.completion_tokens} tokens: {why})", markup=False
        )


class _Pump:
    """Runs the backend in a thread; iterating yields its pieces here, where Ctrl-C lands safely."""

    def __init__(self, session: ChatSession, backend: Backend, cancel: threading.Event):
        self.box: queue.Queue[object] = queue.Queue()
        conversation, sampling = session.conversation(), session.sampling()

        def work() -> None:
            try:
                for piece in backend.stream(session.model, conversation, sampling, cancel):
                    self.box.put(piece)
            except BaseException as exc:  # handed to the main thread, which raises it
                self.box.put(exc)
            finally:
                self.box.put(None)

        self.thread = threading.Thread(target=work, name="impetus-chat", daemon=True)
        self.thread.start()

    def __iter__(self) -> Iterator[GenerationChunk]:
        while True:
            try:
                item = self.box.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def wait(self, timeout: float = 30.0) -> None:
        """After a cancel: the engine stops within a token; wait so its slot is free again."""
        self.thread.join(timeout)


def _read_message() -> str | None:
    """One user message: a line, lines ending in a backslash, or a \"\"\" block. None at EOF."""
    try:
        line = input(PROMPT)
    except EOFError:
        return None
    if line.strip().startswith('"""'):
        lines = [line.strip()[3:]]
        while not lines[-1].rstrip().endswith('"""'):
            lines.append(input(CONTINUATION))
        lines[-1] = lines[-1].rstrip()[:-3]
        return "\n".join(lines).strip()
    lines = [line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input(CONTINUATION))
    return "\n".join(lines).strip()


def _setup_history(path: Path) -> None:
    try:
        import readline
    except ImportError:  # Windows without pyreadline: no history, input still works
        return
    import atexit

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        readline.read_history_file(str(path))
    readline.set_history_length(1000)
    atexit.register(readline.write_history_file, str(path))


def _repl(session: ChatSession, backend: Backend, history: Path) -> None:
    _setup_history(history)
    out = console()
    out.print(f"[bold]impetus chat[/] with [cyan]{session.model}[/] - /help for commands")
    while True:
        try:
            text = _read_message()
        except KeyboardInterrupt:
            out.print()
            continue
        if text is None:
            break
        if not text:
            continue
        if text.startswith("/"):
            try:
                result = session.command(text)
            except ImpetusError as exc:
                err_console().print(f"[red]{exc.message}[/] {exc.hint or ''}")
                continue
            if result.message:
                out.print(result.message, style="dim")
            if result.exit:
                break
            continue
        session.add_user(text)
        _reply(session, backend)


_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\n\t")


def _printable(text: str) -> str:
    """Model output minus control characters, which would move the cursor or ring the bell."""
    return text.translate(_CONTROL)


def _reply(session: ChatSession, backend: Backend) -> None:
    from rich.live import Live
    from rich.markdown import Markdown

    cancel = threading.Event()
    text, last, stopped = "", None, False
    out = console()
    pump = _Pump(session, backend, cancel)
    try:
        with Live(
            Markdown(""), console=out, refresh_per_second=8, vertical_overflow="visible"
        ) as live:
            try:
                for piece in pump:
                    text += piece.text
                    last = piece if piece.finish_reason else last
                    live.update(Markdown(_printable(text)))
            except KeyboardInterrupt:
                cancel.set()
                stopped = True
                pump.wait()
    except ImpetusError as exc:
        session.messages.pop()  # the question was not answered: let the user ask again
        err_console().print(f"[red]{exc.message}[/] {exc.hint or ''}")
        return
    session.add_assistant(text)
    if stopped:
        out.print("[dim](stopped)[/]")
    elif last is not None:
        cut = " · stopped: it repeated itself" if last.stopped_by == "loop" else ""
        out.print(
            f"[dim]{last.completion_tokens} tokens · TTFT {last.ttft_s:.2f} s · "
            f"{last.generation_tps:.1f} tok/s{cut}[/]"
        )
