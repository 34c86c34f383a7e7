"""Consoles and small rendering helpers shared by the commands.

Rich respects NO_COLOR and a non-TTY stdout by itself (plain text when piped); we only make
sure everyone uses the same two consoles.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from rich.console import Console


@functools.cache
def console() -> Console:
    return Console(highlight=False)


@functools.cache
def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, never styled."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0:
        return "forever"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"
