"""`impetus chat` as a user meets it: an interactive session in a pseudo-terminal, and a pipe."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")


class Terminal:
    """A child process on a pseudo-terminal, read until a pattern appears."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the program
            os.execvpe(argv[0], argv, env)
        self.output = ""

    def expect(self, pattern: str, timeout: float = 60.0, *, after: int = 0) -> str:
        """Read until ``pattern`` appears in the output past position ``after``."""
        deadline = time.monotonic() + timeout
        while pattern not in self.output[after:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen; screen so far:\n{self.output[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.5))
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    raise AssertionError(
                        f"exited before {pattern!r}:\n{self.output[-2000:]}"
                    ) from None
        return self.output

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                self.output += os.read(self.fd, 65536).decode("utf-8", "replace")
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("impetus chat did not exit")


def chat_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "IMPETUS_HOME": str(home),
        "TERM": "xterm",
        "COLUMNS": "100",
        "LINES": "40",
    }


def test_interactive_chat_streams_resets_stops_and_exits(
    gemma_gguf: Path, impetus_home: Path
) -> None:
    argv = [
        sys.executable,
        "-m",
        "impetus_cli",
        "chat",
        str(gemma_gguf),
        "--ctx",
        "2048",
        "--max-tokens",
        "16",
    ]
    term = Terminal(argv, chat_env(impetus_home))
    term.expect(">>> ")
    term.send("Say something.\r")
    term.expect("tok/s")  # the reply streamed and its stats line followed
    term.send("/reset\r")
    term.expect("Conversation cleared.")
    term.send("/max_tokens 0\r")
    term.expect("the default")
    seen = len(term.output)
    term.send("Tell me a very long story about a dragon.\r")
    term.expect("\x1b[?25l", after=seen)  # the live reply display opened
    term.expect("\x1b[2K", after=seen)  # ... and redrew at least once: the story is streaming
    term.send("\x03")  # Ctrl-C stops the reply, not the program
    term.expect("(stopped)", after=seen)
    term.send("/exit\r")
    assert term.wait() == 0


def test_piped_prompt_is_answered_once_in_plain_text(gemma_gguf: Path, impetus_home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "impetus_cli", "chat", str(gemma_gguf), "--ctx", "1024"],
        input="What is the capital of France? Answer in one word.",
        capture_output=True,
        text=True,
        env=chat_env(impetus_home),
        timeout=900,  # a guard against a hang, not a speed test: the reply is bounded in tokens
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "\x1b[" not in result.stdout  # no colour codes or cursor movement in a pipe
    # the built-in model is a base model: chat says so once, and the reply ended (the model
    # stopped, or the loop guard stopped a reply that repeated itself), never the timeout
    assert "is a base model" in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("(reply cut")]
    assert all(n.endswith(("it repeated itself)", "the length limit)")) for n in notes), notes


def test_piped_chat_with_an_unknown_model_fails_on_stderr(impetus_home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "impetus_cli", "chat", "no-such-model:1b"],
        input="hi",
        capture_output=True,
        text=True,
        env=chat_env(impetus_home),
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "no-such-model" in result.stderr and "Traceback" not in result.stderr
