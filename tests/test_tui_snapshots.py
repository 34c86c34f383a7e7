"""Snapshots of the dashboard with fixed data: the main screen, the empty state (no server yet)
and the server-unreachable state. Update with `pytest --snapshot-update` after a deliberate change
and look at the SVGs in tests/__snapshots__/."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.errors import ServerUnreachable
from impetus_cli.runtime.status import ServerStatus
from impetus_cli.tui.app import make_app

STATUS = json.loads((Path(__file__).parent / "data" / "tui" / "status.json").read_text())
MODELS = [
    {
        "id": "qwen2.5-coder:7b",
        "format": "gguf",
        "quantization": "Q4_K_M",
        "context_length": 32768,
        "loaded": True,
    },
    {
        "id": "gemma3:270m",
        "format": "gguf",
        "quantization": "Q4_K_M",
        "context_length": 32768,
        "loaded": True,
    },
    {
        "id": "qwen2.5-coder:7b-mlx",
        "format": "mlx",
        "quantization": "4bit",
        "context_length": 32768,
        "loaded": False,
    },
]


class FixedClient:
    """Answers with fixed data, or fails like an unreachable server after ``fail_after`` calls."""

    base_url = "http://127.0.0.1:8080"

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def _answer(self, data: Any) -> Any:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ServerUnreachable("connection refused")
        return data

    def status(self) -> ServerStatus:
        return self._answer(ServerStatus.from_json(STATUS))

    def models(self) -> list[dict[str, Any]]:
        return self._answer(MODELS)

    def load(self, name: str) -> None: ...

    def unload(self, name: str) -> None: ...


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


async def _settle(pilot: Any) -> None:
    await pilot.pause(0.6)


def test_main_screen(snap_compare: Any) -> None:
    app = make_app(FixedClient(), interval=0.1)
    assert snap_compare(app, terminal_size=(140, 40), run_before=_settle)


def test_empty_state_offers_to_start_a_server(snap_compare: Any) -> None:
    app = make_app(FixedClient(fail_after=0), interval=0.1)
    assert snap_compare(app, terminal_size=(140, 40), run_before=_settle)


def test_server_lost_shows_a_banner_and_keeps_the_last_data(snap_compare: Any) -> None:
    app = make_app(FixedClient(fail_after=2), interval=0.1)
    assert snap_compare(app, terminal_size=(140, 40), run_before=_settle)
