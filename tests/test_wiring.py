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


CONTINUE_YAML = """\
# My Continue setup (kept in my dotfiles)
name: Mine
version: 1.0.0
schema: v1
models:
  # the cloud one, for hard tasks
  - name: Claude
    provider: anthropic
    model: claude
# rules I care about
rules:
  - be brief  # really
"""


def test_write_continue_through_a_symlink_keeps_the_link_mode_and_comments(
    tmp_path: Path,
) -> None:
    real = tmp_path / "dotfiles" / "continue.yaml"
    real.parent.mkdir()
    real.write_text(CONTINUE_YAML)
    real.chmod(0o640)
    config = tmp_path / ".continue" / "config.yaml"
    config.parent.mkdir()
    config.symlink_to(real)
    made = write_continue(W, config)
    assert config.is_symlink() and config.resolve() == real  # the link stays
    text = real.read_text()
    for comment in ("# My Continue setup", "# rules I care about", "# really"):
        assert comment in text  # comments outside `models:` survive
    data = yaml.safe_load(text)
    assert data["models"][0]["name"] == "Claude" and data["rules"] == ["be brief"]
    assert [m["name"] for m in data["models"][1:]] == [m["name"] for m in continue_models(W)]
    assert real.stat().st_mode & 0o777 == 0o640
    assert made is not None and made.read_text() == CONTINUE_YAML


def test_write_continue_edits_a_flow_style_list_in_place(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("# flow style\nname: Mine\nmodels: [{name: Claude, model: claude}]\n")
    write_continue(W, config)
    data = yaml.safe_load(config.read_text())
    assert data["name"] == "Mine" and data["models"][0] == {"name": "Claude", "model": "claude"}
    assert len(data["models"]) == 1 + len(continue_models(W))
    assert config.read_text().startswith("# flow style")


def test_write_continue_rewrites_a_file_whose_models_block_cannot_be_cut_out(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    # `extra` refers to an anchor inside `models:`: editing that block as text would break it
    config.write_text("models:\n  - &claude {name: Claude, model: claude}\nextra: *claude\n")
    write_continue(W, config)
    data = yaml.safe_load(config.read_text())
    assert data["extra"] == {"name": "Claude", "model": "claude"}
    assert data["models"][0] == data["extra"] and len(data["models"]) == 4


def test_write_cline_creates_secrets_readable_by_the_owner_only(tmp_path: Path) -> None:
    write_cline(W, tmp_path / "cline")
    assert (tmp_path / "cline" / "secrets.json").stat().st_mode & 0o777 == 0o600
