"""The dashboard driven by key presses against a real `impetus serve` with the tiny GGUF."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from impetus_cli.client import ImpetusClient
from impetus_cli.tui.app import make_app
from tests.test_server_openai import client

pytest.importorskip("llama_cpp")


def rows(app: Any, table_id: str) -> list[list[str]]:
    table = app.query_one(f"#{table_id}")
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def wait_for(pilot: Any, condition: Any, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    raise AssertionError("the dashboard never showed it")


async def test_load_request_and_unload_from_the_keyboard(tiny_server: str) -> None:
    app = make_app(ImpetusClient(tiny_server), interval=0.2)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: any(r[0] == "tiny" for r in rows(app, "local")))
        local = app.query_one("#local")
        local.focus()
        local.move_cursor(row=[r[0] for r in rows(app, "local")].index("tiny"))
        await pilot.press("l")
        await wait_for(pilot, lambda: any(r[0] == "tiny" for r in rows(app, "loaded")))

        def ask() -> None:
            client(tiny_server).chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=16,
                temperature=0,
            )

        await asyncio.get_running_loop().run_in_executor(None, ask)
        await wait_for(
            pilot, lambda: any(r[1] == "tiny" and float(r[5]) > 0 for r in rows(app, "log"))
        )

        loaded = app.query_one("#loaded")
        loaded.focus()
        loaded.move_cursor(row=[r[0] for r in rows(app, "loaded")].index("tiny"))
        await pilot.press("u")
        await wait_for(pilot, lambda: all(r[0] != "tiny" for r in rows(app, "loaded")))
        await pilot.press("q")
