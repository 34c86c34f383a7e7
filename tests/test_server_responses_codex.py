"""The real Codex CLI (`codex exec`) against `/v1/responses`, on the scripted engine so that the
model's turns are known: Codex must read the call, run it, send the output back and finish.
Runs where Codex is installed: on PATH, or under ``$IMPETUS_CLIENTS_DIR/node_modules/.bin``
(`npm install --prefix DIR @openai/codex`)."""

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


def codex_binary() -> str | None:
    clients = os.environ.get("IMPETUS_CLIENTS_DIR")
    local = Path(clients, "node_modules", ".bin", "codex") if clients else None
    return str(local) if local and local.exists() else shutil.which("codex")


CODEX = codex_binary()
pytestmark = pytest.mark.skipif(CODEX is None, reason="the Codex CLI is not installed")
CONFIG = """model = "qwen3:8b"
model_provider = "impetus"
check_for_update_on_startup = false
[model_providers.impetus]
name = "Impetus"
base_url = "{url}/v1"
env_key = "IMPETUS_API_KEY"
wire_api = "responses"
[analytics]
enabled = false
"""


@pytest.fixture
def thinking_fake_server(tmp_path: Path) -> Iterator[str]:
    """The scripted engine as a model that reasons between <think> tags, with room for
    Codex's prompt."""
    FakeEngine.reset()
    model = fake_model(tmp_path, "qwen3:8b")
    settings = replace(load_settings(), ctx=65536, parallel=1, keep_alive=-1)
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


def test_codex_exec_runs_the_call_and_finishes_the_turn(
    thinking_fake_server: str, tmp_path: Path
) -> None:
    call = '<tool_call>{"name": "exec_command", "arguments": {"cmd": "ls -a"}}</tool_call>'
    FakeEngine.enqueue(["<think>I should run ls.</think>", "Listing.", call])
    FakeEngine.enqueue(["<think>It holds README.md.</think>", "README.md is there. done"])
    project, home, codex_home = (tmp_path / d for d in ("project", "home", "codex"))
    for folder in (project, home, codex_home):
        folder.mkdir()
    (project / "README.md").write_text("hello\n")
    (codex_home / "config.toml").write_text(CONFIG.format(url=thinking_fake_server))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(HOME=str(home), CODEX_HOME=str(codex_home), IMPETUS_API_KEY="sk-x")
    task = "List the files in this directory, then say done."
    run = subprocess.run(
        [CODEX or "codex", "exec", "--skip-git-repo-check", "--sandbox", "danger-full-access",
         task],
        cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "README.md is there. done"
    log = run.stderr
    assert "ls -a" in log and "succeeded" in log  # it ran the call we answered
    assert "I should run ls." in log and "It holds README.md." in log  # reasoning shown
    assert not FakeEngine.scripts  # both turns were asked for
