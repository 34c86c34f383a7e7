"""`impetus pull NAME`: download a model with a progress bar, resume and verification; with
`--dry-run`, only say what would be downloaded and how it would load here."""

from __future__ import annotations

from typing import Annotated

import typer

from impetus_cli.commands._options import JsonOpt
from impetus_cli.commands._ui import console, err_console, human_bytes


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)


def pull(
    name: Annotated[
        str, typer.Argument(help="qwen2.5-coder:7b, codellama:gguf, hf:org/repo[:q4_k_m] ...")
    ],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the plan (files, size, memory, context, speed) only."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a model (the quantization that fits this machine unless you name one)."""
    if dry_run:
        from impetus_cli.commands._plan import build_plan, render_plan

        render_plan(build_plan(name), as_json, "dry run: nothing downloaded")
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.download import PullProgress
    from impetus_cli.runtime.download import pull as do_pull

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console(), transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def show(p: PullProgress) -> None:
            if p.filename not in tasks:
                tasks[p.filename] = bar.add_task(p.filename, total=p.total)
            bar.update(tasks[p.filename], completed=p.downloaded, total=p.total)

        model = do_pull(
            name, load_settings(), show, say=lambda text: err_console().print(f"[dim]{text}[/]")
        )
    if as_json:
        from impetus_cli.commands._ui import print_json

        print_json(
            {
                "name": model.name,
                "format": model.format,
                "quantization": model.quantization,
                "size_bytes": model.size_bytes,
                "path": str(model.path),
                "repo": model.repo,
            }
        )
        return
    console().print(
        f"[green]ready[/] {model.name}  ({model.format}, {model.quantization or '-'}, {human_bytes(model.size_bytes)})"
    )
