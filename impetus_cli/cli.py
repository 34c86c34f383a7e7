"""The root command. Each file in ``commands/`` registers its verbs; errors meet one boundary here.

Keep this import-light: ``impetus --help`` must not import llama_cpp, mlx, textual or aiohttp
(tests/test_imports.py checks it).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import Annotated

import typer

from impetus_cli import __version__
from impetus_cli.errors import ImpetusError

app = typer.Typer(
    name="impetus",
    help="Run local LLMs for coding: pull models, serve them to Cline and Continue, chat, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"impetus {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Impetus: a terminal model manager with an on-demand OpenAI-compatible server."""


def _register_commands() -> None:
    """Import every ``commands/<verb>.py`` (not ``_private`` ones) and let it register itself."""
    from impetus_cli import commands

    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"impetus_cli.commands.{module.name}").register(app)


_register_commands()


def report_error(exc: ImpetusError) -> None:
    from rich.panel import Panel
    from rich.text import Text

    from impetus_cli.commands._ui import err_console

    body = Text(exc.message)
    if exc.hint:
        body.append("\n\n" + exc.hint, style="dim")
    err_console().print(Panel(body, title=f"[bold red]{type(exc).__name__}", border_style="red"))


def main() -> None:
    """The console script: run the app, turn expected errors into messages, not tracebacks."""
    debug = os.environ.get("IMPETUS_DEBUG") == "1"
    try:
        app(standalone_mode=True)
    except ImpetusError as exc:
        if debug:
            raise
        report_error(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.exit(130)


if __name__ == "__main__":
    main()
