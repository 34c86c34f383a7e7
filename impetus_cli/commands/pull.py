"""`impetus pull NAME`: download a model with a progress bar, resume and verification."""

from __future__ import annotations

from typing import Annotated

import typer

from impetus_cli.commands._ui import console, err_console, human_bytes


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)


def pull(
    name: Annotated[
        str, typer.Argument(help="qwen2.5-coder:7b, codellama:gguf, hf:org/repo[:q4_k_m] ...")
    ],
) -> None:
    """Download a model (the quantization that fits this machine unless you name one)."""
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
    console().print(
        f"[green]ready[/] {model.name}  ({model.format}, {model.quantization or '-'}, {human_bytes(model.size_bytes)})"
    )
