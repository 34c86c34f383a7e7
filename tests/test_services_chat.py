"""ChatSession: slash commands, save and load, without a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from impetus_cli.errors import ImpetusError
from impetus_cli.services.chat import ChatSession


def session() -> ChatSession:
    s = ChatSession(model="gemma3:270m", system="Be brief.")
    s.add_user("hi")
    s.add_assistant("hello")
    return s


def test_system_prompt_leads_the_conversation() -> None:
    roles = [m.role for m in session().conversation()]
    assert roles == ["system", "user", "assistant"]


def test_reset_keeps_the_system_prompt() -> None:
    s = session()
    s.command("/reset")
    assert [m.role for m in s.conversation()] == ["system"]


def test_system_command_replaces_the_prompt_and_starts_over() -> None:
    s = session()
    s.command("/system You are a pirate.")
    assert s.conversation()[0].content == "You are a pirate." and len(s.messages) == 0


def test_model_and_temperature_commands() -> None:
    s = session()
    s.command("/model qwen2.5-coder:7b")
    s.command("/temperature 0.2")
    assert (s.model, s.sampling().temperature) == ("qwen2.5-coder:7b", 0.2)
    with pytest.raises(ImpetusError, match="between 0 and 2"):
        s.command("/temperature 5")
    with pytest.raises(ImpetusError, match="needs a number"):
        s.command("/temperature warm")


def test_exit_and_unknown_commands() -> None:
    assert session().command("/exit").exit
    with pytest.raises(ImpetusError, match="Unknown command /frobnicate"):
        session().command("/frobnicate")
    assert "/save FILE" in session().command("/help").message


def test_save_json_then_load_restores_the_conversation(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    session().command(f"/save {path}")
    assert json.loads(path.read_text())["messages"][0] == {"role": "system", "content": "Be brief."}
    fresh = ChatSession(model="other")
    fresh.command(f"/load {path}")
    assert fresh.conversation() == session().conversation() and fresh.model == "gemma3:270m"


def test_save_markdown(tmp_path: Path) -> None:
    path = tmp_path / "chat.md"
    session().command(f"/save {path}")
    text = path.read_text()
    assert "## user\n\nhi" in text and "## assistant\n\nhello" in text


def test_load_of_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ImpetusError, match="Cannot load"):
        session().command(f"/load {path}")
    with pytest.raises(ImpetusError, match="Usage: /save FILE"):
        session().command("/save")
