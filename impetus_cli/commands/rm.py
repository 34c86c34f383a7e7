"""`impetus rm NAME`: remove a model we downloaded or imported (never another tool's files)."""

from __future__ import annotations

from typing import Annotated

import typer

from impetus_cli.commands._options import YesOpt
from impetus_cli.commands._ui import console, human_bytes


def register(app: typer.Typer) -> None:
    app.command("rm")(rm)


def rm(name: Annotated[str, typer.Argument(help="Model to remove.")], yes: YesOpt = False) -> None:
    """Delete a pulled model's files and manifest, or forget an imported one (asks first unless -y).

    Only files a pull downloaded (or an import copied) are deleted; a file another model, another
    snapshot of the Hugging Face cache or another tool still uses stays.
    """
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.store import Store

    store = Store(load_settings())
    model = store.removable(name)
    if model.origin == "imported" and not model.owned_files:
        question = f"Forget {model.name}? Its file stays at {model.path}."
    else:
        question = f"Remove {model.name} ({human_bytes(model.size_bytes)})?"
    if not yes and not typer.confirm(question, default=False):
        raise typer.Exit(1)
    deleted = store.remove(model.name)
    if model.origin == "imported" and not model.owned_files:
        console().print(f"Removed {model.name} (nothing deleted: its file stays at {model.path}).")
    else:
        console().print(f"Removed {model.name} ({len(deleted)} file(s) deleted).")
