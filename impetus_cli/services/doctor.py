"""`impetus doctor`: the checks for what users get wrong, each with how to fix it.

Every fact comes from a probe in ``Probes`` (the real ones below), so tests simulate each
problem by replacing one probe. A check is "ok", "warn" (works, but worth knowing) or "fail".
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.discovery import Skipped

Status = Literal["ok", "warn", "fail"]
GB = 1_000_000_000


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _llama_gpu_offload() -> bool | None:
    """True/False when llama.cpp can/cannot offload to a GPU; None when not importable."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return bool(llama_cpp.llama_supports_gpu_offload())


def _mlx_importable() -> str | None:
    """None when mlx works, else the import error."""
    try:
        import mlx.core  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def _port_state(host: str, port: int) -> Literal["free", "impetus", "other"]:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return "free"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as reply:
            body = json.loads(reply.read() or b"{}")
        return "impetus" if "version" in body and body.get("status") else "other"
    except (OSError, ValueError):
        return "other"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            return True
    except OSError:
        return False


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _model_names(settings: Settings) -> list[str]:
    from impetus_cli.runtime.store import Store

    return [m.name for m in Store(settings).list()]


def _skipped_files(settings: Settings) -> list[Skipped]:
    from impetus_cli.runtime.store import Store

    return Store(settings).skipped()


def _hf_cache() -> Path:
    from impetus_cli.runtime.discovery import hf_cache_dir

    return hf_cache_dir()


@dataclass
class Probes:
    settings: Settings
    rosetta: Callable[[], bool] = lambda: _hardware().rosetta
    apple_silicon: Callable[[], bool] = lambda: _hardware().apple_silicon
    llama_gpu_offload: Callable[[], bool | None] = _llama_gpu_offload
    mlx_error: Callable[[], str | None] = _mlx_importable
    port_state: Callable[[str, int], str] = _port_state
    writable: Callable[[Path], bool] = _writable
    free_bytes: Callable[[Path], int] = _free_bytes
    models: Callable[[Settings], list[str]] = _model_names
    skipped: Callable[[Settings], list[Skipped]] = _skipped_files
    hf_cache: Callable[[], Path] = _hf_cache
    extra: list[Callable[[], Check]] = field(default_factory=list)


def _hardware():  # type: ignore[no-untyped-def]
    from impetus_cli.runtime.hardware import detect

    return detect()


def check_platform(p: Probes) -> list[Check]:
    if p.rosetta():
        return [
            Check(
                "python",
                "fail",
                "This Python runs under Rosetta (x86_64 on Apple Silicon): "
                "llama.cpp gets no Metal and is ~10x slower.",
                "Install an arm64 Python (python.org or /opt/homebrew) and run `make setup` again.",
            )
        ]
    return [Check("python", "ok", f"native {os.uname().machine} Python")]


def check_backends(p: Probes) -> list[Check]:
    checks = []
    offload = p.llama_gpu_offload()
    if offload is None:
        checks.append(
            Check(
                "llama.cpp",
                "fail",
                "llama-cpp-python is not importable.",
                "Run `make setup` (it compiles llama-cpp-python).",
            )
        )
    elif p.apple_silicon() and not offload:
        checks.append(
            Check(
                "llama.cpp",
                "fail",
                "llama-cpp-python was built without Metal.",
                'Rebuild: CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall '
                "--no-cache-dir llama-cpp-python",
            )
        )
    else:
        checks.append(Check("llama.cpp", "ok", "GPU offload" if offload else "CPU build"))
    error = p.mlx_error()
    if error:
        checks.append(
            Check(
                "mlx",
                "warn",
                f"mlx is not importable ({error}): MLX models cannot run.",
                "pip install mlx-lm (and mlx[cpu] on Linux)",
            )
        )
    else:
        checks.append(Check("mlx", "ok", "importable"))
    return checks


def check_server(p: Probes) -> list[Check]:
    host = "127.0.0.1" if p.settings.host in ("0.0.0.0", "::") else p.settings.host
    state = p.port_state(host, p.settings.port)
    if state == "impetus":
        return [Check("server", "ok", f"impetus serve answers on {host}:{p.settings.port}")]
    if state == "other":
        return [
            Check(
                "server",
                "fail",
                f"Port {p.settings.port} is taken by another program.",
                f"Stop it, or run `impetus serve --port {p.settings.port + 1}`.",
            )
        ]
    return [
        Check(
            "server",
            "warn",
            f"No server on {host}:{p.settings.port}.",
            "Start one with `impetus serve`.",
        )
    ]


def check_storage(p: Probes) -> list[Check]:
    checks = []
    if p.writable(p.settings.home):
        checks.append(Check("home", "ok", f"{p.settings.home} is writable"))
    else:
        checks.append(
            Check(
                "home",
                "fail",
                f"{p.settings.home} is not writable.",
                "Fix its permissions or set IMPETUS_HOME to a writable directory.",
            )
        )
    cache = p.hf_cache()
    free = p.free_bytes(cache)
    status: Status = "ok" if free >= 10 * GB else "warn" if free >= 2 * GB else "fail"
    checks.append(
        Check(
            "disk",
            status,
            f"{free / GB:.1f} GB free for models in {cache}",
            "" if status == "ok" else "Free some space: a 7B model takes ~5 GB.",
        )
    )
    return checks


def check_models(p: Probes) -> list[Check]:
    names = p.models(p.settings)
    if not names:
        return [
            Check(
                "models",
                "fail",
                "No model is installed.",
                "Run `impetus pull qwen2.5-coder:7b` (or `make setup` for the built-in one).",
            )
        ]
    return [
        Check(
            "models",
            "ok",
            f"{len(names)} available: {', '.join(names[:4])}" + (" ..." if len(names) > 4 else ""),
        )
    ]


SHOWN_SKIPPED = 5


def check_files(p: Probes) -> list[Check]:
    """Model files that `list` and the server leave out because they cannot be read."""
    skipped = p.skipped(p.settings)
    if not skipped:
        return [Check("files", "ok", "every model file found can be read")]
    lines = [f"{s.path} ({s.origin}): {s.reason}" for s in skipped[:SHOWN_SKIPPED]]
    if len(skipped) > SHOWN_SKIPPED:
        lines.append(f"... and {len(skipped) - SHOWN_SKIPPED} more")
    return [
        Check(
            "files",
            "warn",
            f"{len(skipped)} model file(s) skipped:\n" + "\n".join(lines),
            "Remove or repair broken links and fix permissions; the other models are not "
            "affected. Impetus never changes other tools' files.",
        )
    ]


def run_checks(probes: Probes) -> list[Check]:
    checks: list[Check] = []
    groups = (check_platform, check_backends, check_server, check_storage, check_models)
    for group in (*groups, check_files):
        checks.extend(group(probes))
    checks.extend(extra() for extra in probes.extra)
    return checks
