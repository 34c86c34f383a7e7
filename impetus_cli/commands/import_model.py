"""`impetus import PATH`: register a local GGUF file (or split set) or MLX directory by name."""

from __future__ import annotations

from typing import Annotated

import typer

from impetus_cli.commands._options import JsonOpt
from impetus_cli.commands._ui import console, err_console, human_bytes, print_json


def register(app: typer.Typer) -> None:
    app.command("import")(import_model)


def import_model(
    path: Annotated[
        str,
        typer.Argument(help="A .gguf file (the first part of a split one) or an MLX directory."),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Name to serve it under (default: from the file name)."),
    ] = None,
    copy: Annotated[
        bool,
        typer.Option(
            "--copy", help="Copy it under IMPETUS_HOME/models (rm then deletes the copy)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a model file from elsewhere under a name every verb and the server accept.

    The file stays where it is unless --copy is given; `impetus rm NAME` then only forgets the name.
    """
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.importer import import_model as do_import

    model = do_import(
        path, load_settings(), name, copy, say=lambda text: err_console().print(f"[dim]{text}[/]")
    )
    if as_json:
        print_json(
            {
                "name": model.name,
                "format": model.format,
                "quantization": model.quantization,
                "size_bytes": model.size_bytes,
                "path": str(model.path),
                "copied": bool(model.owned_files),
            }
        )
        return
    where = "copied to" if model.owned_files else "served from"
    console().print(
        f"[green]imported[/] {model.name}  ({model.format}, {model.quantization or '-'}, "
        f"{human_bytes(model.size_bytes)}), {where} {model.path}"
    )
