"""Pure renderers from the server's status snapshot to Rich text and table rows.

Kept apart from the Textual app so each piece is a function of data: the dashboard calls them on
every refresh, and tests can check them without a terminal. The snapshot is the typed
``ServerStatus`` (runtime/status.py) that ``GET /impetus/status`` sends.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from impetus_cli.runtime.status import ServerStatus

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red")


def gb(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.1f} GB"


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def seconds(s: float | int | None) -> str:
    if s is None:
        return "-"
    if s < 0:
        return "pinned"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def machine_text(status: ServerStatus) -> Text:
    hw = status.hardware
    name = hw.get("variant") or hw.get("chip") or hw.get("cpu_name") or "unknown machine"
    cores = f"{hw.get('performance_cores', '?')}P+{hw.get('efficiency_cores', 0)}E cores"
    if not hw.get("chip"):
        cores = f"{hw.get('physical_cores', '?')} cores / {hw.get('logical_cores', '?')} threads"
    gpu = f" · {hw['gpu_cores']} GPU cores" if hw.get("gpu_cores") else ""
    text = Text.assemble((name, "bold"), f"  {cores}{gpu} · {gb(hw.get('memory_bytes'))} memory")
    if hw.get("rosetta"):
        text.append("  ROSETTA: no Metal, ~10x slower", style="bold red")
    return text


def memory_bar(status: ServerStatus, width: int = 48) -> Text:
    """The budget as a bar: one coloured segment per loaded model, then free room."""
    budget = max(status.budget_bytes, 1)
    text = Text()
    used_cells = 0
    for i, model in enumerate(status.models):
        share = model.memory_bytes or model.planned_bytes
        cells = max(1, round(width * share / budget)) if share else 0
        text.append("█" * min(cells, width - used_cells), style=PALETTE[i % len(PALETTE)])
        used_cells = min(width, used_cells + cells)
    text.append("░" * (width - used_cells), style="dim")
    text.append(f"  {gb(status.used_bytes)} of {gb(budget)} budget")
    pressure = status.system_memory.get("percent")
    if pressure is not None:
        style = "red" if pressure > 90 else "yellow" if pressure > 75 else "green"
        text.append(f" · system memory {pressure:.0f}% used", style=style)
    return text


def legend(status: ServerStatus) -> Text:
    text = Text()
    for i, model in enumerate(status.models):
        text.append("■ ", style=PALETTE[i % len(PALETTE)])
        text.append(f"{model.name}  ")
    for line in cache_lines(status):
        text.append("\n")
        text.append_text(line)
    if status.remotes:
        text.append("\n" if status.models else "")
        text.append_text(remotes_text(status))
    return text


def cache_lines(status: ServerStatus) -> list[Text]:
    """One line per model with a prompt cache behind its KV cache: each tier's entries, bytes
    of its budget, and the prompts it served (and their tokens, not evaluated)."""
    lines = []
    for m in status.models:
        if not m.cache_tiers:
            continue
        text = Text(f"prompt cache {m.name} ", style="dim")
        for t in m.cache_tiers:
            text.append(f" {str(t.get('tier', '?')).upper()} ", style="bold")
            text.append(
                f"{t.get('entries', 0)} · {_size(t.get('bytes', 0))} of "
                f"{_size(t.get('budget', 0))} · "
                f"{t.get('hits', 0)} hits ({t.get('tokens', 0)} tokens) "
            )
        lines.append(text)
    return lines


def remotes_text(status: ServerStatus) -> Text:
    """One line for the remote upstreams: each one up (its models, requests in flight) or
    down (why, and when it is tried again)."""
    text = Text("remote ", style="dim")
    for r in status.remotes:
        if r.state == "down":
            retry = f", retry in {r.retry_in_s:.0f}s" if r.retry_in_s is not None else ""
            text.append(f"● {r.name} down", style="bold red")
            text.append(f" ({r.last_error or 'unreachable'}{retry})  ")
            continue
        style = "green" if r.state == "up" else "yellow"
        text.append(f"● {r.name} {r.state}", style=style)
        busy = f", {r.in_flight} in flight" if r.in_flight else ""
        text.append(f" {len(r.models)} models{busy}  ")
    return text


def loaded_rows(status: ServerStatus) -> list[tuple[str, ...]]:
    """One row per loaded model; a base model (no chat template) says so by its name."""
    return [
        (
            f"{m.name} (base)" if m.base_model else m.name,
            m.format or "-",
            m.quantization or "-",
            str(m.n_ctx or "-"),
            gb(m.memory_bytes),
            "pinned" if m.pinned else seconds(m.expires_in_s),
            str(m.in_flight),
            str(m.queued),
            f"{100 * m.cache_hit_rate:.0f}%",
            f"{m.tps_recent:.1f}",
        )
        for m in status.models
    ]


def total_series(status: ServerStatus) -> list[float]:
    """Tokens/s of all models together, per bucket of the throughput window."""
    columns = [list(s) for s in status.throughput.series.values()]
    if not columns:
        return [0.0]
    length = max(len(c) for c in columns)
    return [sum(float(c[i]) for c in columns if i < len(c)) for i in range(length)]


def throughput_text(status: ServerStatus) -> Text:
    series = total_series(status)
    ttfts = [r.ttft_s for r in status.recent_requests[-10:]]
    text = Text.assemble(("now ", "dim"), (f"{series[-1]:.1f} tok/s", "bold"))
    text.append(f"  peak {max(series):.1f}")
    if ttfts:
        text.append(f"  TTFT (last {len(ttfts)}) {sum(ttfts) / len(ttfts):.2f} s")
    for model in status.models:
        text.append(f"\n{model.name}: {model.tps_recent:.1f} tok/s")
        if model.loop_stops:
            text.append(f"  {model.loop_stops} replies stopped: loops", style="yellow")
        if model.drafted_tokens:  # speculative decoding: how many guesses the model took
            rate = model.accepted_tokens / model.drafted_tokens
            text.append(
                f"  drafts {model.accepted_tokens}/{model.drafted_tokens} accepted ({rate:.0%})",
                style="dim",
            )
        if model.failure:
            text.append(f"  engine failure: {model.failure}", style="bold red")
        if model.placement:  # layers split across `impetus worker`s
            from impetus_cli.runtime.rpc import describe_parts

            text.append(f"\n  split: {describe_parts(model.placement)}", style="dim")
    return text


def request_rows(status: ServerStatus) -> list[tuple[str, ...]]:
    """Newest first; a reply the loop guard ended shows "loop" as its status."""
    return [
        (
            time.strftime("%H:%M:%S", time.localtime(r.time)),
            r.model,
            str(r.prompt_tokens),
            str(r.completion_tokens),
            f"{r.ttft_s:.2f}",
            f"{r.tps:.1f}",
            "loop" if r.stopped_by == "loop" else str(r.status),
        )
        for r in reversed(status.recent_requests)
    ]


def _state(m: dict[str, Any]) -> str:
    """ "loaded" for a local model in memory; "remote" or "down" for a remote one."""
    if str(m.get("owned_by") or "").startswith("remote:"):
        return "down" if m.get("status") == "down" else "remote"
    return "loaded" if m.get("loaded") else ""


def local_rows(models: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            str(m.get("id")),
            str(m.get("format") or "-"),
            str(m.get("quantization") or "-"),
            str(m.get("context_length") or "-"),
            _state(m),
        )
        for m in models
    ]
