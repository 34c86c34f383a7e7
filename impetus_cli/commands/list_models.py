"""`impetus list`: the local models, ours and other tools'."""

from __future__ import annotations

import time

import typer

from impetus_cli.commands._options import JsonOpt
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


def list_models(as_json: JsonOpt = False) -> None:
    """Models you can serve: pulled ones, the built-in one, and Ollama / LM Studio / HF cache ones."""
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
            m.name,
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
