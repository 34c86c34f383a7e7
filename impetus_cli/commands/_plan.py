"""Render a PullPlan (a catalog name before it is pulled) for `pull --dry-run` and `show`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from impetus_cli.commands._ui import console, human_bytes, print_json

if TYPE_CHECKING:
    from impetus_cli.runtime.pull_plan import PullPlan


def build_plan(name: str) -> PullPlan:
    """The plan of a catalog name on this machine, with the settings the user has."""
    from impetus_cli.runtime import hardware
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.pull_plan import plan_pull

    return plan_pull(name, load_settings(), hardware.detect())


def render_plan(plan: PullPlan, as_json: bool, title: str) -> None:
    if as_json:
        print_json(plan.to_json())
        return
    from rich.table import Table

    data = plan.to_json()
    memory, params = data["memory"], data["parameters"]
    size = human_bytes(data["size_bytes"]) + ("" if data["size_listed"] else " (estimated)")
    speed = data["expected_tokens_per_second"]
    rows = [
        ("model", f"{data['name']}  [dim]({title})[/]"),
        ("repository", data["repo"]),
        ("files", "\n".join(data["files"])),
        ("quantization", f"{data['quantization']}, {size}"),
        ("parameters", _parameters(params)),
        (
            "context",
            f"{data['context']} x {data['parallel']} sequences (trained {data['trained_context']})",
        ),
        ("memory", _memory_line(memory)),
        ("expected speed", f"~{speed:.0f} tok/s on {data['machine']}" if speed else "unknown here"),
        ("why", data["reason"]),
        ("tuning", "; ".join(data["notes"])),
    ]
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    console().print(table)


def _parameters(params: dict[str, int | None]) -> str:
    total = (params["total"] or 0) / 1e9
    if params["experts"]:
        return (
            f"{total:.1f}B total, {(params['active'] or 0) / 1e9:.1f}B active "
            f"({params['experts_used']} of {params['experts']} experts per token)"
        )
    return f"{total:.1f}B"


def _memory_line(memory: dict[str, int]) -> str:
    parts = [f"weights {human_bytes(memory['weights'])}", f"KV {human_bytes(memory['kv_cache'])}"]
    if memory["recurrent_state"]:
        parts.append(f"recurrent state {human_bytes(memory['recurrent_state'])}")
    parts.append(f"buffers {human_bytes(memory['buffers'])}")
    if memory["snapshots"]:
        parts.append(f"snapshots {human_bytes(memory['snapshots'])}")
    return f"{human_bytes(memory['total'])} ({', '.join(parts)})"
