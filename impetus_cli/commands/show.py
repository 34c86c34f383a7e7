"""`impetus show NAME`: facts read from the model file, and what it needs on this machine; for a
catalog name not pulled yet, the plan the catalog's facts give (as `pull --dry-run`)."""

from __future__ import annotations

from typing import Annotated

import typer

from impetus_cli.commands._options import JsonOpt
from impetus_cli.commands._ui import console, human_bytes, print_json
from impetus_cli.errors import ImpetusError, InvalidModelName, ModelNotFound
from impetus_cli.runtime.types import ModelInfo


def register(app: typer.Typer) -> None:
    app.command("show")(show)


def show(
    name: Annotated[str | None, typer.Argument(help="Model name or path.")] = None,
    hardware: Annotated[
        bool, typer.Option("--hardware", help="Show this machine instead.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Architecture, parameters, quantization, layers, context, template; memory at the default context."""
    from impetus_cli.commands import hardware as hardware_command

    if hardware or name is None:
        if name is None and not hardware:
            raise ImpetusError("Name a model, or pass --hardware.", "e.g. impetus show gemma3:270m")
        hardware_command.hardware(as_json)
        return
    from dataclasses import asdict

    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.manager import ModelManager

    manager = ModelManager(load_settings())
    try:
        model = manager.resolve(name)
    except ModelNotFound:
        if not _is_catalog_name(name):
            raise
        from impetus_cli.commands._plan import build_plan, render_plan

        render_plan(build_plan(name), as_json, "not pulled yet: `impetus pull` downloads it")
        return
    info = manager.info(model)
    plan = manager.plan(name)
    if as_json:
        data = {
            **asdict(info),
            "path": str(info.path),
            "chat_template": info.chat_template is not None,
            "origin": model.origin,
            "plan": {**asdict(plan), "model": model.name, "total_bytes": plan.total_bytes},
        }
        print_json(data)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    rows = [
        ("model", model.name),
        ("file", str(info.path)),
        ("origin", model.origin),
        ("format", info.format),
        ("architecture", info.architecture),
        ("parameters", _parameters(info)),
        ("quantization", info.quantization or "-"),
        ("layers", str(info.n_layers)),
        ("heads", f"{info.n_heads} ({info.n_kv_heads} KV, {info.head_dim} wide)"),
        ("trained context", str(info.context_length)),
        *_layer_kinds(info),
        (
            "chat template",
            "in the file" if info.chat_template else "none: a built-in one for the architecture",
        ),
        (
            "kind",
            "base model: continues text, does not follow chat turns (pull an instruct model "
            "for chat and agents)"
            if info.base_model
            else "tuned for chat or instructions",
        ),
        ("size on disk", human_bytes(info.file_bytes)),
        ("planned context", f"{plan.n_ctx} x {plan.n_parallel} sequences"),
        (
            "planned memory",
            f"{human_bytes(plan.total_bytes)} (weights {human_bytes(plan.weights_bytes)}, "
            f"KV {human_bytes(plan.kv_bytes)}, buffers {human_bytes(plan.compute_bytes)}"
            + (f", snapshots {human_bytes(plan.snapshot_bytes)}" if plan.snapshot_bytes else "")
            + ")",
        ),
        ("tuning", "; ".join(plan.notes)),
    ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    console().print(table)


def _is_catalog_name(name: str) -> bool:
    from impetus_cli.runtime import catalog
    from impetus_cli.runtime.names import parse_ref

    try:
        return catalog.knows(parse_ref(name))
    except InvalidModelName:
        return False


def _parameters(info: ModelInfo) -> str:
    if not info.n_params:
        return "-"
    if info.active_params:
        return (
            f"{info.n_params / 1e9:.2f} B total, {info.active_params / 1e9:.2f} B active "
            f"({info.n_experts_used} of {info.n_experts} experts per token)"
        )
    return f"{info.n_params / 1e9:.2f} B"


def _layer_kinds(info: ModelInfo) -> list[tuple[str, str]]:
    """Rows for layers that do not hold a full KV cache: sliding-window and recurrent ones."""
    rows = []
    if info.swa_layers:
        rows.append(("sliding window", f"{info.sliding_window} tokens on {info.swa_layers} layers"))
    if info.recurrent_layers:
        rows.append(
            (
                "recurrent layers",
                f"{info.recurrent_layers} of {info.n_layers}, "
                f"{human_bytes(info.recurrent_state_bytes)} of state per sequence",
            )
        )
    return rows
