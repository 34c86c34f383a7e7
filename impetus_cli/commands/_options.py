"""Reusable ``Annotated`` option aliases, so every command spells them the same way."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", help="Base URL of a running `impetus serve` (default: local, port 8080)."
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
