"""`impetus rm NAME`: remove a model we downloaded (never another tool's files)."""

from __future__ import annotations

from typing import Annotated

import typer

from impetus_cli.commands._options import YesOpt
from impetus_cli.commands._ui import console, human_bytes


def register(app: typer.Typer) -> None:
    app.command("rm")(rm)


def rm(name: Annotated[str, typer.Argument(help="Model to remove.")], yes: YesOpt = False) -> None:
    """Delete a pulled model's files and manifest (asks first unless -y)."""
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.store import Store

    store = Store(load_settings())
    model = store.get(name)
    if not yes and not typer.confirm(
        f"Remove {model.name} ({human_bytes(model.size_bytes)})?", default=False
    ):
        raise typer.Exit(1)
    deleted = store.remove(model.name)
    console().print(f"Removed {model.name} ({len(deleted)} file(s) deleted).")
