"""Settings layering: defaults < config.toml < IMPETUS_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from impetus_cli.errors import ConfigError
from impetus_cli.runtime.config import load_settings, parse_size


def test_defaults_live_under_impetus_home(impetus_home: Path) -> None:
    settings = load_settings()
    assert settings.home == impetus_home
    assert settings.manifests_dir == impetus_home / "manifests"
    assert (settings.host, settings.port, settings.default_model) == (
        "127.0.0.1",
        8080,
        "gemma3:270m",
    )


def test_each_layer_overrides_the_one_below(impetus_home: Path) -> None:
    (impetus_home / "config.toml").write_text("port = 9000\nkeep-alive = 60\nctx = 4096\n")
    env = {"IMPETUS_HOME": str(impetus_home), "IMPETUS_PORT": "9100", "IMPETUS_CTX": "8192"}
    settings = load_settings({"port": 9200, "threads": None}, env=env)
    assert settings.port == 9200  # flag beats env beats file
    assert settings.ctx == 8192  # env beats file
    assert settings.keep_alive == 60.0  # file beats default
    assert settings.threads is None  # a flag left unset does not override


def test_memory_budget_accepts_human_sizes() -> None:
    assert parse_size("12GB") == 12_000_000_000
    assert parse_size("12GiB") == 12 * 2**30
    assert parse_size("512 MB") == 512_000_000
    assert parse_size(1024) == 1024
    assert load_settings({"memory_budget": "8GiB"}).memory_budget == 8 * 2**30


def test_bad_config_file_is_a_clear_error(impetus_home: Path) -> None:
    (impetus_home / "config.toml").write_text("port = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()


def test_unknown_setting_in_config_names_the_known_ones(impetus_home: Path) -> None:
    (impetus_home / "config.toml").write_text('colour = "blue"\n')
    with pytest.raises(ConfigError, match="Unknown setting 'colour'") as info:
        load_settings()
    assert "port" in (info.value.hint or "")


def test_bad_value_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="Bad value for port"):
        load_settings(env={"IMPETUS_PORT": "eighty"})
    with pytest.raises(ConfigError, match="Not a size"):
        parse_size("lots")


def test_lists_come_from_commas_or_toml_arrays(impetus_home: Path) -> None:
    env = {"IMPETUS_HOME": str(impetus_home), "IMPETUS_CORS_ORIGINS": "http://a, http://b"}
    assert load_settings(env=env).cors_origins == ("http://a", "http://b")
    (impetus_home / "config.toml").write_text('cors_origins = ["http://c"]\n')
    assert load_settings().cors_origins == ("http://c",)
