"""`impetus list`: the local models, ours and other tools'."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from impetus_cli.commands._options import JsonOpt, UrlOpt
from impetus_cli.commands._ui import console, err_console, human_bytes, print_json


def register(app: typer.Typer) -> None:
    app.command("list")(list_models)


def _ago(stamp: float | None) -> str:
    if not stamp:
        return "-"
    seconds = time.time() - stamp
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return "just now"


RemoteOpt = Annotated[
    bool,
    typer.Option(
        "--remote",
        help="Remote models (serve --remote): from the running server, else from the upstreams.",
    ),
]


def list_models(as_json: JsonOpt = False, remote: RemoteOpt = False, url: UrlOpt = None) -> None:
    """Models you can serve: pulled ones, the built-in one, and Ollama / LM Studio / HF cache ones."""
    if remote:
        return _list_remote(as_json, url)
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.store import Store

    listing = Store(load_settings()).listing()
    models = listing.models
    if as_json:
        print_json(
            [
                {
                    "name": m.name,
                    "format": m.format,
                    "quantization": m.quantization,
                    "parameters": m.parameters,
                    "size_bytes": m.size_bytes,
                    "context_length": m.context_length,
                    "origin": m.origin,
                    "base_model": m.base_model,
                    "path": str(m.path),
                    "last_used": m.last_used,
                }
                for m in models
            ]
        )
        return
    from rich.table import Table

    table = Table(title=None)
    longest = max((len(m.name) for m in models), default=4)
    table.add_column("name", no_wrap=True, min_width=min(48, longest))
    for col, justify in (
        ("format", "left"),
        ("quant", "left"),
        ("params", "right"),
        ("size", "right"),
        ("context", "right"),
        ("origin", "left"),
        ("last used", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for m in models:
        table.add_row(
            f"{m.name} [dim](base model)[/]" if m.base_model else m.name,
            m.format,
            m.quantization or "-",
            m.parameters or "-",
            human_bytes(m.size_bytes),
            str(m.context_length or "-"),
            m.origin,
            _ago(m.last_used),
        )
    console().print(table if models else "No models yet: `impetus pull qwen2.5-coder:7b`.")
    if listing.skipped:  # on stderr: the table stays clean when piped
        err_console().print(
            f"[yellow]{len(listing.skipped)} model file(s) could not be read and are not listed"
            "[/]: `impetus doctor` says which and why."
        )
    if any(m.base_model for m in models):
        err_console().print(
            "[dim]A base model continues text but does not follow chat turns: use it for "
            "completion and wiring; pull an instruct model for chat and agents.[/]"
        )


def _remote_rows(url: str | None) -> tuple[list[dict[str, Any]], str]:
    """Remote models as the running server lists them, or (no server) as the upstreams in
    the settings answer now; and where the list came from."""
    from impetus_cli.client import ImpetusClient
    from impetus_cli.errors import ServerUnreachable
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.remote.registry import probe_now

    settings = load_settings()
    base = url or settings.base_url
    try:
        listed = ImpetusClient(base, api_key=settings.api_key).models()
        rows = [m for m in listed if str(m.get("owned_by", "")).startswith("remote:")]
        return [{**m, "remote": m["owned_by"].removeprefix("remote:")} for m in rows], base
    except ServerUnreachable:
        if url or not settings.remote:
            raise
    found, states = probe_now(settings.remote)
    for s in states:
        if s.state == "down":
            err_console().print(f"[yellow]remote {s.name} ({s.url}) is down: {s.last_error}[/]")
    rows = [
        {"id": e.id, "remote": e.remote, "context_length": e.context_length, "status": "up"}
        for e in found
    ]
    return rows, "the upstreams (no server running)"


def _list_remote(as_json: bool, url: str | None) -> None:
    rows, source = _remote_rows(url)
    if as_json:
        keys = ("id", "remote", "context_length", "status")
        print_json([{k: m.get(k) for k in keys} for m in rows])
        return
    from rich.table import Table

    table = Table(caption=f"from {source}")
    for col in ("name", "remote", "context", "state"):
        table.add_column(col)
    for m in rows:
        state = str(m.get("status") or "up")
        table.add_row(
            str(m["id"]),
            str(m["remote"]),
            str(m.get("context_length") or "-"),
            f"[red]{state}[/]" if state == "down" else state,
        )
    console().print(table if rows else f"No remote models (from {source}).")
