"""`impetus ps`: what the running server has loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from impetus_cli.commands._options import JsonOpt, UrlOpt
from impetus_cli.commands._ui import console, human_bytes, human_duration, print_json

if TYPE_CHECKING:
    from impetus_cli.runtime.status import ServerStatus


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
        _remotes(status)
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
    for m in models:
        if m.placement:  # split across RPC workers (runtime/rpc.py)
            from impetus_cli.runtime.rpc import describe_parts

            console().print(f"{m.name}: {describe_parts(m.placement)}")
    _remotes(status)
    if any(m.failure for m in models):
        for m in models:
            if m.failure:
                console().print(f"[red]{m.name}: engine failure: {m.failure}[/]")


def _remotes(status: ServerStatus) -> None:
    """The remote upstreams (`serve --remote`): up or down, their models, requests in flight."""
    from rich.table import Table

    if not status.remotes:
        return
    table = Table(title="remote upstreams", title_justify="left")
    for col in ("remote", "url", "state", "models", "in flight", "last error"):
        table.add_column(col)
    for r in status.remotes:
        state = f"[red]{r.state}[/]" if r.state == "down" else r.state
        table.add_row(
            r.name,
            r.url,
            state,
            ", ".join(m.removeprefix(f"{r.name}/") for m in r.models) or "-",
            str(r.in_flight),
            r.last_error or "-",
        )
    console().print(table)
