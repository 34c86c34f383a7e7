"""`impetus ps`: what the running server has loaded."""

from __future__ import annotations

import typer

from impetus_cli.commands._options import JsonOpt, UrlOpt
from impetus_cli.commands._ui import console, human_bytes, human_duration, print_json


def register(app: typer.Typer) -> None:
    app.command("ps")(ps)


def ps(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Loaded models: memory, context, keep-alive left, requests in flight."""
    from rich.table import Table

    from impetus_cli.client import ImpetusClient
    from impetus_cli.runtime.config import load_settings

    settings = load_settings()
    status = ImpetusClient(url or settings.base_url, api_key=settings.api_key).status()
    models = status.models
    if as_json:
        print_json(status.to_json()["models"])
        return
    if not models:
        console().print("No model loaded (they load on the first request).")
        return
    table = Table()
    for col in (
        "model",
        "format",
        "quant",
        "context",
        "memory",
        "keep-alive left",
        "in flight",
        "queued",
    ):
        table.add_column(col)
    for m in models:
        left = "pinned" if m.pinned else "busy" if m.in_flight else human_duration(m.expires_in_s)
        table.add_row(
            f"{m.name} (base model)" if m.base_model else m.name,
            m.format or "-",
            m.quantization or "-",
            str(m.n_ctx),
            human_bytes(m.memory_bytes),
            left,
            str(m.in_flight),
            str(m.queued),
        )
    console().print(table)
    if any(m.failure for m in models):
        for m in models:
            if m.failure:
                console().print(f"[red]{m.name}: engine failure: {m.failure}[/]")
