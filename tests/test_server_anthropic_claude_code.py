"""The real Claude Code (`claude -p`) against `/v1/messages`, on the scripted engine so that the
model's turns are known: Claude Code must read the call, run it, send its result back and
finish the turn. Runs where Claude Code is installed: on PATH, or under
``$IMPETUS_CLIENTS_DIR/node_modules/.bin`` (`npm install --prefix DIR @anthropic-ai/claude-code`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.manager import ModelManager
from tests.fixtures.fake_engine import FakeEngine, fake_info, fake_model
from tests.fixtures.servers import Registry, start_server


def claude_binary() -> str | None:
    clients = os.environ.get("IMPETUS_CLIENTS_DIR")
    local = Path(clients, "node_modules", ".bin", "claude") if clients else None
    return str(local) if local and local.exists() else shutil.which("claude")


CLAUDE = claude_binary()
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed")
KEY = "sk-local"


@pytest.fixture
def thinking_server(tmp_path: Path) -> Iterator[str]:
    """The scripted engine as `qwen3:8b`, a model that reasons between <think> tags, with
    room for Claude Code's prompt, behind an API key."""
    FakeEngine.reset()
    model = fake_model(tmp_path, "qwen3:8b")
    settings = replace(load_settings(), ctx=65536, parallel=1, keep_alive=-1, api_key=KEY)
    manager = ModelManager(
        settings,
        store=Registry({"qwen3:8b": model.path}),
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: 100_000_000_000,
        allow_paths=False,
    )
    info = replace(fake_info(model.path, n_ctx=65536), architecture="qwen3")
    manager.models.info = lambda m: info  # type: ignore[method-assign]
    with start_server(manager, settings) as url:
        yield url


def test_claude_code_runs_the_call_and_finishes_the_turn(
    thinking_server: str, tmp_path: Path
) -> None:
    call = (
        '<tool_call>{"name": "Bash", "arguments": {"command": "ls -a", '
        '"description": "List the files"}}</tool_call>'
    )
    FakeEngine.enqueue(["<think>I should run ls.</think>", "Listing.", call])
    FakeEngine.enqueue(["<think>It holds README.md.</think>", "README.md is there. done"])
    project, home = tmp_path / "project", tmp_path / "home"
    for folder in (project, home):
        folder.mkdir()
    (project / "README.md").write_text("hello\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=thinking_server,
        ANTHROPIC_API_KEY=KEY,
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    task = "List the files in this directory with the Bash tool, then say done."
    run = subprocess.run(
        [CLAUDE or "claude", "-p", task, "--model", "qwen3:8b", "--allowedTools", "Bash",
         "--output-format", "stream-json", "--verbose"],
        cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    log = run.stdout
    assert '"result":"README.md is there. done"' in log.replace(": ", ":")
    assert "README.md" in log and "ls -a" in log  # it ran the call and sent back its output
    assert "I should run ls." in log  # the thinking block reached it
    assert not FakeEngine.scripts  # both turns were asked for
