"""Test-wide setup: every test runs with its own IMPETUS_HOME and Hugging Face cache.

Fixture modules live in tests/fixtures/ (tiny models, the loopback Hub, servers); each is
loaded as a pytest plugin, so any test can ask for any fixture by name.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import tests.fixtures as _fixtures

pytest_plugins = [
    f"tests.fixtures.{m.name}"
    for m in pkgutil.iter_modules(_fixtures.__path__)
    if not m.name.startswith("_")
]


@pytest.fixture(autouse=True)
def impetus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point IMPETUS_HOME, the HF cache and other tools' stores at empty temp dirs."""
    home = tmp_path / "impetus-home"
    home.mkdir()
    monkeypatch.setenv("IMPETUS_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("IMPETUS_OLLAMA_MODELS", str(tmp_path / "ollama-models"))
    monkeypatch.setenv("IMPETUS_LMSTUDIO_MODELS", str(tmp_path / "lmstudio-models"))
    for var in ("IMPETUS_API_KEY", "HF_ENDPOINT", "HF_TOKEN", "IMPETUS_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return home
