"""`impetus doctor`: check the setup; exit 0 when all is well, 1 when something must be fixed."""

from __future__ import annotations

import typer

from impetus_cli.commands._options import JsonOpt
from impetus_cli.commands._ui import console, print_json

MARKS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(as_json: JsonOpt = False) -> None:
    """Check Python, backends, server port, storage and models; say how to fix each problem."""
    from dataclasses import asdict

    from rich.table import Table

    from impetus_cli.runtime.config import load_settings
    from impetus_cli.services.doctor import Probes, run_checks

    checks = run_checks(Probes(load_settings()))
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        print_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        for check in checks:
            table.add_row(MARKS[check.status], check.name, check.detail)
            if check.fix:
                table.add_row("", "", f"[dim]-> {check.fix}[/]")
        console().print(table)
    raise typer.Exit(1 if failed else 0)
