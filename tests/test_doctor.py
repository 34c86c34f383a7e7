"""`impetus doctor`: each problem simulated through an injected probe."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.discovery import Skipped
from impetus_cli.services.doctor import Check, Probes, run_checks


def healthy(tmp_path: Path) -> Probes:
    return Probes(
        settings=load_settings(),
        rosetta=lambda: False,
        apple_silicon=lambda: True,
        llama_gpu_offload=lambda: True,
        mlx_error=lambda: None,
        port_state=lambda host, port: "impetus",
        writable=lambda path: True,
        free_bytes=lambda path: 100 * 10**9,
        models=lambda settings: ["gemma3:270m"],
        skipped=lambda settings: [],
        hf_cache=lambda: tmp_path,
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_healthy_machine_passes_every_check(tmp_path: Path) -> None:
    assert {c.status for c in run_checks(healthy(tmp_path))} == {"ok"}


@pytest.mark.parametrize(
    ("change", "name", "status", "fix_mentions"),
    [
        ({"rosetta": lambda: True}, "python", "fail", "arm64"),
        ({"llama_gpu_offload": lambda: False}, "llama.cpp", "fail", "GGML_METAL"),
        ({"llama_gpu_offload": lambda: None}, "llama.cpp", "fail", "make setup"),
        ({"mlx_error": lambda: "No module named 'mlx'"}, "mlx", "warn", "mlx-lm"),
        ({"port_state": lambda h, p: "other"}, "server", "fail", "--port 8081"),
        ({"port_state": lambda h, p: "free"}, "server", "warn", "impetus serve"),
        ({"writable": lambda path: False}, "home", "fail", "IMPETUS_HOME"),
        ({"free_bytes": lambda path: 10**9}, "disk", "fail", "space"),
        ({"free_bytes": lambda path: 5 * 10**9}, "disk", "warn", "space"),
        ({"models": lambda s: []}, "models", "fail", "impetus pull"),
        (
            {"skipped": lambda s: [Skipped(Path("/x.gguf"), "a broken link", "hf-cache")]},
            "files",
            "warn",
            "broken links",
        ),
    ],
)
def test_each_problem_is_reported_with_a_fix(
    tmp_path: Path, change: dict, name: str, status: str, fix_mentions: str
) -> None:
    check = by_name(run_checks(replace(healthy(tmp_path), **change)))[name]
    assert check.status == status
    assert fix_mentions in check.fix


def test_gpu_offload_is_not_required_off_apple_silicon(tmp_path: Path) -> None:
    probes = replace(
        healthy(tmp_path), apple_silicon=lambda: False, llama_gpu_offload=lambda: False
    )
    assert by_name(run_checks(probes))["llama.cpp"].status == "ok"


def test_doctor_exit_status_follows_failures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    import impetus_cli.services.doctor as doctor_module
    from impetus_cli.cli import app

    def fake_checks(probes: Probes) -> list[Check]:
        return [Check("models", "fail", "No model is installed.", "Run `impetus pull x`.")]

    monkeypatch.setattr(doctor_module, "run_checks", fake_checks)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "No model is installed" in result.output and "impetus pull x" in result.output
    monkeypatch.setattr(doctor_module, "run_checks", lambda p: [Check("home", "ok", "fine")])
    assert CliRunner().invoke(app, ["doctor", "--json"]).exit_code == 0
