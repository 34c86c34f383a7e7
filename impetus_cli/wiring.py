"""Settings for the coding assistants, and merging them into their own settings files.

Cline keeps its provider settings in ``~/.cline/data/globalState.json`` (+ ``secrets.json`` for
the key); Continue in ``~/.continue/config.yaml``. ``--write`` merges ours in: every other
setting stays, a timestamped backup is kept, and the write is atomic.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus_cli.errors import ImpetusError

CLINE_DIR = Path("~/.cline/data")
CONTINUE_CONFIG = Path("~/.continue/config.yaml")
# Cline refuses an empty key field for "OpenAI Compatible"; any value works when auth is off.
PLACEHOLDER_KEY = "impetus"


@dataclass(frozen=True)
class Wiring:
    base_url: str
    model: str
    context_window: int
    api_key: str | None = None
    autocomplete_model: str | None = None
    embeddings_model: str | None = None


def cline_state(w: Wiring) -> tuple[dict[str, Any], dict[str, str]]:
    """Cline's globalState entries (both plan and act mode) and its secrets."""
    info = {"contextWindow": w.context_window, "maxTokens": -1, "supportsImages": False}
    state: dict[str, Any] = {"openAiBaseUrl": w.base_url}
    for mode in ("planMode", "actMode"):
        state[f"{mode}ApiProvider"] = "openai"
        state[f"{mode}OpenAiModelId"] = w.model
        state[f"{mode}OpenAiModelInfo"] = info
    return state, {"openAiApiKey": w.api_key or PLACEHOLDER_KEY}


def continue_models(w: Wiring) -> list[dict[str, Any]]:
    """Continue `models:` entries: chat/edit/apply, autocomplete and embeddings."""
    base = {"provider": "openai", "apiBase": w.base_url, "apiKey": w.api_key or PLACEHOLDER_KEY}
    models: list[dict[str, Any]] = [
        {
            "name": f"Impetus {w.model}",
            **base,
            "model": w.model,
            "roles": ["chat", "edit", "apply"],
            "defaultCompletionOptions": {"contextLength": w.context_window},
        },
        {
            "name": f"Impetus autocomplete {w.autocomplete_model or w.model}",
            **base,
            "model": w.autocomplete_model or w.model,
            "roles": ["autocomplete"],
        },
        {
            "name": f"Impetus embeddings {w.embeddings_model or w.model}",
            **base,
            "model": w.embeddings_model or w.model,
            "roles": ["embed"],
        },
    ]
    return models


def backup(path: Path) -> Path | None:
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while target.exists():  # two writes in one second keep both backups
        target = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    shutil.copy2(path, target)
    return target


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImpetusError(f"Cannot read {path}: {exc}", "Fix the file or move it away.") from exc
    if not isinstance(data, dict):
        raise ImpetusError(f"{path} does not hold a JSON object.", "Fix the file or move it away.")
    return data


def write_cline(w: Wiring, data_dir: Path = CLINE_DIR) -> list[Path]:
    """Merge into Cline's state files; returns the backups made."""
    from impetus_cli.runtime.store import atomic_write_json

    data_dir = data_dir.expanduser()
    state, secrets = cline_state(w)
    backups = []
    for name, update in (("globalState.json", state), ("secrets.json", secrets)):
        path = data_dir / name
        merged = {**_read_json(path), **update}
        if (made := backup(path)) is not None:
            backups.append(made)
        data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, merged)
    return backups


def write_continue(w: Wiring, config: Path = CONTINUE_CONFIG) -> Path | None:
    """Merge our models into Continue's config.yaml (ours replace entries of the same name)."""
    import yaml

    from impetus_cli.runtime.store import atomic_write_text

    config = config.expanduser()
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) if config.exists() else None
    except (OSError, yaml.YAMLError) as exc:
        raise ImpetusError(f"Cannot read {config}: {exc}", "Fix the file or move it away.") from exc
    data = data or {"name": "Local config", "version": "1.0.0", "schema": "v1"}
    if not isinstance(data, dict):
        raise ImpetusError(f"{config} is not a YAML mapping.", "Fix the file or move it away.")
    ours = continue_models(w)
    names = {m["name"] for m in ours}
    kept = [
        m for m in data.get("models") or [] if not (isinstance(m, dict) and m.get("name") in names)
    ]
    data["models"] = kept + ours
    made = backup(config)
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return made
