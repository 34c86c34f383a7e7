"""Honesty about base models (issue 13 §1): `list`, `show` and an import say when a model is
pretrained only (no chat template, no instruct tag), so no one mistakes it for a chat model."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import run


def test_list_marks_the_builtin_model_as_a_base_model() -> None:
    listed = {m["name"]: m for m in json.loads(run("list", "--json").stdout)}
    assert listed["gemma3:270m"]["base_model"] is True
    table = run("list")
    assert "gemma3:270m (base model)" in table.stdout
    assert "does not follow chat turns" in table.stderr  # the table itself stays clean


def test_show_says_what_kind_of_model_a_file_is(gemma_gguf: Path, tiny_gguf: Path) -> None:
    assert "base model: continues text" in run("show", str(gemma_gguf)).stdout
    # the tiny fixture carries a chat template: not a base model
    assert "tuned for chat or instructions" in run("show", str(tiny_gguf)).stdout


def test_an_imported_model_records_its_kind(tmp_path: Path, tiny_gguf: Path) -> None:
    from tests.fixtures.tiny_models import write_tiny_gguf

    base = write_tiny_gguf(tmp_path / "pretrained-7b.gguf", chat_template=None)
    assert run("import", str(base), "--name", "pretrained").returncode == 0
    assert run("import", str(tiny_gguf), "--name", "tuned").returncode == 0
    listed = {m["name"]: m for m in json.loads(run("list", "--json").stdout)}
    assert listed["pretrained"]["base_model"] is True
    assert listed["tuned"]["base_model"] is False
