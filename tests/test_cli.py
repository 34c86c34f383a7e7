"""The commands as a user runs them: output, JSON, and errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.store import Store
from impetus_cli.runtime.types import LocalModel


def run(*argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "impetus_cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        input=input,
        timeout=120,
    )


def test_list_json_includes_the_builtin_model() -> None:
    result = run("list", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)}
    assert (
        models["gemma3:270m"]["origin"] == "builtin" and models["gemma3:270m"]["format"] == "gguf"
    )


def test_show_reads_facts_from_the_file(tiny_gguf: Path) -> None:
    result = run("show", str(tiny_gguf), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (
        data["architecture"] == "llama" and data["n_layers"] == 2 and data["chat_template"] is True
    )
    assert data["plan"]["n_ctx"] == 4096 and data["plan"]["total_bytes"] > 0


def test_show_hardware() -> None:
    result = run("show", "--hardware", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["memory_budget_bytes"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "no-such-model"], "does not exist"),
        (["pull", "qwen2.5-coderr:7b"], "not in the catalog"),
        (["pull", "qwen2.5-coder:7b-banana"], "Unknown tag part"),
        (["serve", "--host", "0.0.0.0"], "without an API key"),
        (["show", "model.onnx"], "does not exist"),
        (["ps", "--url", "http://127.0.0.1:9"], "Cannot reach"),
    ],
)
def test_user_mistakes_get_a_message_not_a_traceback(argv: list[str], message: str) -> None:
    result = run(*argv)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_onnx_and_pytorch_files_are_refused_with_advice(tmp_path: Path) -> None:
    for name in ("model.onnx", "pytorch_model.bin"):
        (tmp_path / name).write_bytes(b"\0" * 16)
        result = run("show", str(tmp_path / name))
        assert (
            result.returncode == 1 and "GGUF" in result.stderr and "Traceback" not in result.stderr
        )


def test_rm_removes_our_files_but_never_another_tools(tmp_path: Path) -> None:
    settings = load_settings()
    blob = tmp_path / "ours.gguf"
    blob.write_bytes(b"GGUF")
    Store(settings).add(
        LocalModel(
            name="ours:1b",
            format="gguf",
            path=blob,
            origin="impetus",
            size_bytes=4,
            owned_files=(blob,),
        )
    )
    assert run("rm", "ours:1b").returncode == 1  # asks, and stdin says no
    assert blob.exists()
    result = run("rm", "ours:1b", "-y")
    assert result.returncode == 0 and not blob.exists()
    assert (
        run("rm", "gemma3:270m", "-y").returncode == 1
    )  # the built-in model belongs to its package
