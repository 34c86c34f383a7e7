"""The dashboard's pull and remove act on the server it watches (its /api/pull and
/api/delete), never on the machine the dashboard runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from impetus_cli.client import ImpetusClient
from impetus_cli.commands.tui import local_actions
from impetus_cli.runtime.config import load_settings
from tests.fixtures.hub import FakeHub, gguf_bytes
from tests.test_server_ollama_pull import NAME, _serve, publish

pytest.importorskip("llama_cpp")


def test_pull_and_remove_go_through_the_watched_server(fake_hub: FakeHub, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))

    for url, settings in _serve():
        data = gguf_bytes(tmp_path)
        publish(fake_hub, NAME, settings, data)
        client = ImpetusClient(url)
        actions = local_actions(load_settings(), client)
        seen.clear()
        assert actions.pull(NAME, progress) == NAME
        assert seen and seen[-1][0] == seen[-1][1] == len(data)
        assert NAME in [m["id"] for m in client.models()]
        actions.remove(NAME)
        assert NAME not in [m["id"] for m in client.models()]
