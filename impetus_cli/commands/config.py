"""`impetus config cline|continue [--write]`: the settings a coding assistant needs.

The context window comes from the running server when there is one (what it really loaded or
planned), else from the planner in this process; ``--write`` merges the settings into the
client's own file, keeping a backup and every other setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from impetus_cli.commands._options import JsonOpt, UrlOpt
from impetus_cli.commands._ui import console, print_json
from impetus_cli.errors import ImpetusError

if TYPE_CHECKING:
    from impetus_cli.runtime.config import Settings
    from impetus_cli.services.wiring import Wiring

config_app = typer.Typer(
    help="Print or write the settings for Cline and Continue.", no_args_is_help=True
)

ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model id (default: built-in).")
]
WriteOpt = Annotated[bool, typer.Option("--write", help="Merge into the client's settings file.")]


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


def _wiring(model: str | None, url: str | None, autocomplete: str | None = None) -> Wiring:
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.services.wiring import Wiring

    settings = load_settings()
    model = model or settings.default_model
    base_url = (url or settings.base_url).rstrip("/")
    base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
    return Wiring(
        base_url=base_url,
        model=model,
        context_window=_context_window(model, base_url, settings),
        api_key=settings.api_key,
        autocomplete_model=autocomplete,
    )


def _context_window(model: str, base_url: str, settings: Settings) -> int:
    """Ask the server; without one, ask the planner (no model is loaded for that)."""
    from impetus_cli.client import ImpetusClient

    try:
        for entry in ImpetusClient(base_url, api_key=settings.api_key).models():
            if entry.get("id") == model and entry.get("context_length"):
                return int(entry["context_length"])
    except ImpetusError:
        pass  # no server running: fall back to the plan this machine would make
    from impetus_cli.runtime.manager import ModelManager

    manager = ModelManager(settings)
    try:
        return manager.plan(model).n_ctx
    finally:
        manager.close()


@config_app.command("cline")
def cline(
    model: ModelOpt = None, url: UrlOpt = None, write: WriteOpt = False, as_json: JsonOpt = False
) -> None:
    """Settings for Cline's "OpenAI Compatible" provider."""
    from impetus_cli.services.wiring import cline_state, write_cline

    w = _wiring(model, url)
    state, secrets = cline_state(w)
    if as_json:
        print_json({"globalState": state, "secrets": secrets})
    else:
        out = console()
        out.print("[bold]Cline[/] -> Settings -> API Provider: [cyan]OpenAI Compatible[/]")
        out.print(f"  Base URL:            {w.base_url}")
        out.print(f"  API Key:             {secrets['openAiApiKey']}")
        out.print(f"  Model ID:            {w.model}")
        out.print(f"  Context Window Size: {w.context_window}")
    if write:
        backups = write_cline(w)
        console().print(
            f"Wrote Cline settings (backups: {', '.join(map(str, backups)) or 'none needed'})."
        )


@config_app.command("continue")
def continue_(
    model: ModelOpt = None,
    url: UrlOpt = None,
    autocomplete: Annotated[str | None, typer.Option(help="Model for tab autocomplete.")] = None,
    write: WriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Models for Continue's config.yaml (chat, autocomplete, embeddings)."""
    import yaml

    from impetus_cli.services.wiring import continue_models, write_continue

    w = _wiring(model, url, autocomplete)
    models = continue_models(w)
    if as_json:
        print_json({"models": models})
    else:
        console().print("# ~/.continue/config.yaml", style="dim")
        console().print(yaml.safe_dump({"models": models}, sort_keys=False), markup=False)
    if write:
        made = write_continue(w)
        console().print(f"Wrote Continue config (backup: {made or 'none needed'}).")
