"""Settings for the coding assistants, and merging them into their own settings files.

Cline keeps its provider settings in ``~/.cline/data/globalState.json`` (+ ``secrets.json`` for
the key); Continue in ``~/.continue/config.yaml``. ``--write`` merges ours in: every other
setting stays, a timestamped backup is kept, and the write is atomic. A settings file that is a
symlink (dotfiles repositories) is written through: the file it points at changes, the link
stays, and so do the file's permissions.

Continue's YAML keeps its comments everywhere but inside the ``models:`` list: only that block's
text is replaced (PyYAML, our YAML library, cannot round-trip comments, so the rest of the file is
kept as text). When the file's layout does not allow that (a flow-style list, several documents),
the whole file is rewritten from its data and comments are lost; the backup keeps them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.fs import PRIVATE_MODE, atomic_write_json, atomic_write_text

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
    data_dir = data_dir.expanduser()
    state, secrets = cline_state(w)
    backups = []
    for name, update in (("globalState.json", state), ("secrets.json", secrets)):
        path = data_dir / name
        merged = {**_read_json(path), **update}
        if (made := backup(path)) is not None:
            backups.append(made)
        data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, merged, mode=PRIVATE_MODE)  # secrets: owner only, when new
    return backups


_TOP_KEY = re.compile(r"^models\s*:")


def _models_block(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the lines of the top-level ``models:`` entry, or None."""
    start = next((i for i, line in enumerate(lines) if _TOP_KEY.match(line)), None)
    if start is None:
        return None
    end = start + 1
    for i in range(start + 1, len(lines)):
        text = lines[i]
        if not text.strip() or text.lstrip().startswith("#"):
            continue  # blank lines and comments belong to the block only if it goes on after
        if text[0] in " \t-":
            end = i + 1
        else:
            break
    return start, end


def merge_yaml_text(text: str, data: dict[str, Any]) -> str | None:
    """``text`` with its top-level ``models:`` block replaced by ``data["models"]`` (or one
    appended), everything else as it was; None when the result would not load as ``data``."""
    import yaml

    block = yaml.safe_dump({"models": data["models"]}, sort_keys=False, allow_unicode=True)
    lines = text.splitlines(keepends=True)
    span = _models_block(lines)
    if span is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        merged = text + sep + block
    else:
        merged = "".join(lines[: span[0]]) + block + "".join(lines[span[1] :])
    try:
        same = yaml.safe_load(merged) == data
    except yaml.YAMLError:
        return None
    return merged if same else None


def write_continue(w: Wiring, config: Path = CONTINUE_CONFIG) -> Path | None:
    """Merge our models into Continue's config.yaml (ours replace entries of the same name)."""
    import yaml

    config = config.expanduser()
    try:
        text = config.read_text(encoding="utf-8") if config.exists() else ""
        data = yaml.safe_load(text) if text else None
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
    merged = merge_yaml_text(text, data) if text.strip() else None
    made = backup(config)
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config, merged or yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return made
