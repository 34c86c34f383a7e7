"""Pure renderers from the server's status snapshot to Rich text and table rows.

Kept apart from the Textual app so each piece is a function of data: the dashboard calls them on
every refresh, and tests can check them without a terminal. The snapshot schema is the one
``GET /impetus/status`` documents (runtime/manager.py).
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red")


def gb(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.1f} GB"


def seconds(s: float | int | None) -> str:
    if s is None:
        return "-"
    if s < 0:
        return "pinned"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def machine_text(status: dict[str, Any]) -> Text:
    hw = status.get("hardware") or {}
    name = hw.get("variant") or hw.get("chip") or hw.get("cpu_name") or "unknown machine"
    cores = f"{hw.get('performance_cores', '?')}P+{hw.get('efficiency_cores', 0)}E cores"
    if not hw.get("chip"):
        cores = f"{hw.get('physical_cores', '?')} cores / {hw.get('logical_cores', '?')} threads"
    gpu = f" · {hw['gpu_cores']} GPU cores" if hw.get("gpu_cores") else ""
    text = Text.assemble((name, "bold"), f"  {cores}{gpu} · {gb(hw.get('memory_bytes'))} memory")
    if hw.get("rosetta"):
        text.append("  ROSETTA: no Metal, ~10x slower", style="bold red")
    return text


def memory_bar(status: dict[str, Any], width: int = 48) -> Text:
    """The budget as a bar: one coloured segment per loaded model, then free room."""
    budget = max(int(status.get("budget_bytes") or 0), 1)
    text = Text()
    used_cells = 0
    for i, model in enumerate(status.get("models") or []):
        share = int(model.get("memory_bytes") or model.get("planned_bytes") or 0)
        cells = max(1, round(width * share / budget)) if share else 0
        text.append("█" * min(cells, width - used_cells), style=PALETTE[i % len(PALETTE)])
        used_cells = min(width, used_cells + cells)
    text.append("░" * (width - used_cells), style="dim")
    used = int(status.get("used_bytes") or 0)
    text.append(f"  {gb(used)} of {gb(budget)} budget")
    system = status.get("system_memory") or {}
    if system.get("percent") is not None:
        pressure = float(system["percent"])
        style = "red" if pressure > 90 else "yellow" if pressure > 75 else "green"
        text.append(f" · system memory {pressure:.0f}% used", style=style)
    return text


def legend(status: dict[str, Any]) -> Text:
    text = Text()
    for i, model in enumerate(status.get("models") or []):
        text.append("■ ", style=PALETTE[i % len(PALETTE)])
        text.append(f"{model.get('name')}  ")
    return text


def loaded_rows(status: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for m in status.get("models") or []:
        hit = m.get("cache_hit_rate")
        rows.append(
            (
                str(m.get("name")),
                str(m.get("format") or "-"),
                str(m.get("quantization") or "-"),
                str(m.get("n_ctx") or "-"),
                gb(m.get("memory_bytes")),
                "pinned" if m.get("pinned") else seconds(m.get("expires_in_s")),
                str(m.get("in_flight", 0)),
                str(m.get("queued", 0)),
                "-" if hit is None else f"{100 * float(hit):.0f}%",
                f"{float(m.get('tps_recent') or 0):.1f}",
            )
        )
    return rows


def total_series(status: dict[str, Any]) -> list[float]:
    """Tokens/s of all models together, per bucket of the throughput window."""
    series = (status.get("throughput") or {}).get("series") or {}
    columns = [list(map(float, s)) for s in series.values()]
    if not columns:
        return [0.0]
    length = max(len(c) for c in columns)
    return [sum(c[i] for c in columns if i < len(c)) for i in range(length)]


def throughput_text(status: dict[str, Any]) -> Text:
    series = total_series(status)
    recent = status.get("recent_requests") or []
    ttfts = [float(r["ttft_s"]) for r in recent[-10:] if r.get("ttft_s") is not None]
    text = Text.assemble(("now ", "dim"), (f"{series[-1]:.1f} tok/s", "bold"))
    text.append(f"  peak {max(series):.1f}")
    if ttfts:
        text.append(f"  TTFT (last {len(ttfts)}) {sum(ttfts) / len(ttfts):.2f} s")
    for model in status.get("models") or []:
        text.append(f"\n{model.get('name')}: {float(model.get('tps_recent') or 0):.1f} tok/s")
    return text


def request_rows(status: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in reversed(status.get("recent_requests") or []):
        rows.append(
            (
                time.strftime("%H:%M:%S", time.localtime(float(r.get("time") or 0))),
                str(r.get("model")),
                str(r.get("prompt_tokens", 0)),
                str(r.get("completion_tokens", 0)),
                f"{float(r.get('ttft_s') or 0):.2f}",
                f"{float(r.get('tps') or 0):.1f}",
                str(r.get("status")),
            )
        )
    return rows


def local_rows(models: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            str(m.get("id")),
            str(m.get("format") or "-"),
            str(m.get("quantization") or "-"),
            str(m.get("context_length") or "-"),
            "loaded" if m.get("loaded") else "",
        )
        for m in models
    ]
