"""`impetus hardware`: this machine as the planner sees it."""

from __future__ import annotations

import typer

from impetus_cli.commands._options import JsonOpt
from impetus_cli.commands._ui import console, print_json


def register(app: typer.Typer) -> None:
    app.command("hardware")(hardware)


def hardware(as_json: JsonOpt = False) -> None:
    """Chip, cores, memory, GPU wired limit and the memory budget for models."""
    from impetus_cli.runtime import hardware as hw
    from impetus_cli.runtime.config import load_settings

    settings = load_settings()
    profile = hw.detect()
    if as_json:
        print_json(
            {**hw.as_dict(profile), "memory_budget_bytes": hw.memory_budget(profile, settings)}
        )
        return
    render(profile, settings)


def render(profile, settings) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    from impetus_cli.runtime.hardware import describe

    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    for key, value in describe(profile, settings):
        table.add_row(f"[bold]{key}[/]", value)
    console().print(table)
