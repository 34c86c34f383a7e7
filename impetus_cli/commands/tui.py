"""`impetus tui`: the live dashboard, a client of a running server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from impetus_cli.commands._options import UrlOpt

if TYPE_CHECKING:
    from impetus_cli.client import ImpetusClient
    from impetus_cli.runtime.config import Settings
    from impetus_cli.tui.app import LocalActions


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)


def tui(url: UrlOpt = None) -> None:
    """Watch loaded models, the memory budget, throughput and requests; load, unload, pull."""
    from impetus_cli.client import ImpetusClient
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.tui.app import make_app

    settings = load_settings()
    client = ImpetusClient(url or settings.base_url, api_key=settings.api_key)
    make_app(client, local_actions(settings, client)).run()


def local_actions(settings: Settings, client: ImpetusClient) -> LocalActions:
    """Pull and remove act on the server the dashboard watches (its /api/pull and
    /api/delete, as `ollama`'s CLI does), so `--url` never changes this machine by mistake;
    start_server launches `impetus serve` here."""
    from impetus_cli.tui.app import LocalActions

    def start_server() -> str:
        import os
        import subprocess
        import sys

        settings.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = settings.logs_dir / "serve.log"
        # 0600: requests and model names land in it; no one else on the machine reads them
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(log, 0o600)  # also when an older version created it readable
        with os.fdopen(fd, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "impetus_cli", "serve", "--port", str(settings.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return f"started impetus serve (pid {proc.pid}, log {log}); waiting for it to answer..."

    return LocalActions(pull=client.pull, remove=client.remove, start_server=start_server)
