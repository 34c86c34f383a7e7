"""`impetus config cline|continue --write` keeps the user's other settings and a backup."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from impetus_cli.services.wiring import (
    Wiring,
    cline_state,
    continue_models,
    write_cline,
    write_continue,
)

W = Wiring(base_url="http://127.0.0.1:8080/v1", model="qwen2.5-coder:7b", context_window=32768)


def test_cline_state_sets_both_modes_to_openai_compatible() -> None:
    state, secrets = cline_state(W)
    assert state["openAiBaseUrl"] == W.base_url
    for mode in ("planMode", "actMode"):
        assert state[f"{mode}ApiProvider"] == "openai"
        assert state[f"{mode}OpenAiModelId"] == "qwen2.5-coder:7b"
        assert state[f"{mode}OpenAiModelInfo"]["contextWindow"] == 32768
    assert secrets["openAiApiKey"]  # Cline will not accept an empty key


def test_write_cline_merges_and_keeps_a_backup(tmp_path: Path) -> None:
    data = tmp_path / "cline"
    data.mkdir()
    (data / "globalState.json").write_text(json.dumps({"telemetrySetting": "disabled"}))
    (data / "secrets.json").write_text(json.dumps({"anthropicApiKey": "sk-keep"}))
    backups = write_cline(W, data)
    state = json.loads((data / "globalState.json").read_text())
    secrets = json.loads((data / "secrets.json").read_text())
    assert state["telemetrySetting"] == "disabled" and state["actModeOpenAiModelId"] == W.model
    assert secrets["anthropicApiKey"] == "sk-keep" and secrets["openAiApiKey"]
    assert len(backups) == 2
    assert json.loads(backups[0].read_text()) == {"telemetrySetting": "disabled"}


def test_write_continue_replaces_only_our_models(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    theirs = {"name": "Claude", "provider": "anthropic", "model": "claude"}
    config.write_text(yaml.safe_dump({"name": "Mine", "models": [theirs], "rules": ["be brief"]}))
    made = write_continue(W, config)
    write_continue(W, config)  # twice: no duplicate entries
    data = yaml.safe_load(config.read_text())
    assert data["rules"] == ["be brief"] and data["name"] == "Mine"
    assert data["models"][0] == theirs
    assert len(data["models"]) == 1 + len(continue_models(W))
    assert made is not None and yaml.safe_load(made.read_text())["models"] == [theirs]


def test_continue_models_cover_chat_autocomplete_and_embeddings() -> None:
    roles = {role for m in continue_models(W) for role in m["roles"]}
    assert {"chat", "autocomplete", "embed"} <= roles
    assert all(m["apiBase"] == W.base_url for m in continue_models(W))


def test_write_continue_creates_a_new_config(tmp_path: Path) -> None:
    config = tmp_path / "new" / "config.yaml"
    assert write_continue(W, config) is None
    assert yaml.safe_load(config.read_text())["models"][0]["model"] == W.model
