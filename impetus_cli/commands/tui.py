"""`impetus tui`: the live dashboard, a client of a running server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from impetus_cli.commands._options import UrlOpt

if TYPE_CHECKING:
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
    make_app(client, local_actions(settings, url)).run()


def local_actions(settings: Settings, url: str | None) -> LocalActions:
    """Pull and remove act on this machine's store; start_server launches `impetus serve`."""
    from impetus_cli.tui.app import LocalActions

    def pull(name: str, progress):  # type: ignore[no-untyped-def]
        from impetus_cli.runtime.download import pull as do_pull

        return do_pull(name, settings, lambda p: progress(p.downloaded, p.total)).name

    def remove(name: str) -> None:
        from impetus_cli.runtime.store import Store

        Store(settings).remove(name)

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

    del url  # a remote server is only watched; only the local one can be started
    return LocalActions(pull=pull, remove=remove, start_server=start_server)
