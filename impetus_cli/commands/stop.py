"""`impetus stop NAME`: unload a model from the running server."""

from __future__ import annotations

from typing import Annotated

import typer

from impetus_cli.commands._options import JsonOpt, UrlOpt
from impetus_cli.commands._ui import console, print_json


def register(app: typer.Typer) -> None:
    app.command("stop")(stop)


def stop(
    name: Annotated[str, typer.Argument(help="Model to unload.")],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Unload a model from the running server (it loads again on the next request)."""
    from impetus_cli.client import ImpetusClient
    from impetus_cli.runtime.config import load_settings

    settings = load_settings()
    result = ImpetusClient(url or settings.base_url, api_key=settings.api_key).unload(name)
    if as_json:
        print_json(result)
    elif result.get("unloaded"):
        console().print(f"Unloaded {name}.")
    else:
        console().print(f"{name} was not loaded.")
