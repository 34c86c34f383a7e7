"""`impetus pull`: resolve a name, download (hub.py), verify, register.

We choose the file (the catalog's quantization for this machine, or one of a Hub repo's GGUF
files), fetch every part of a split GGUF, and write the manifest only after all of it is on disk
and verified, recording which files this pull created (and so may delete on `rm`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from impetus_cli.errors import ImpetusError, ModelNotFound
from impetus_cli.runtime import catalog, quant
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.hub import (
    FileSpec,
    ProgressFn,
    PullProgress,
    RepoFiles,
    check_disk,
    download_dir,
    download_file,
    hub_errors,
    repo_files,
    sha256_of,
)
from impetus_cli.runtime.names import parse_ref
from impetus_cli.runtime.types import Format, LocalModel, ModelRef

__all__ = ["PullProgress", "hub_errors", "pull", "sha256_of"]


@dataclass(frozen=True)
class _Choice:
    """What a pull will fetch and register."""

    name: str
    fmt: Format
    files: tuple[str, ...]  # GGUF file(s): every part of a split model; or MLX glob patterns
    quant: str | None
    reason: str


def gguf_sets(sizes: dict[str, int]) -> dict[str, int]:
    """A repo's GGUF models: each whole file, and each split set under its first part, with the
    total size of its parts (sets with a part missing and vision projectors are left out)."""
    models = {}
    for name in sorted(f for f in sizes if f.endswith(".gguf")):
        if name.rsplit("/", 1)[-1].startswith("mmproj"):
            continue  # a vision projector is not a model on its own
        parts = quant.split_set(name)
        if parts[0] == name and all(p in sizes for p in parts):
            models[name] = sum(sizes[p] for p in parts)
    return models


def _hf_gguf(ref: ModelRef, repo: RepoFiles, budget: int, ctx: int) -> _Choice:
    models = gguf_sets(repo.sizes)
    if ref.filename:
        if ref.filename not in repo.sizes:
            raise ModelNotFound(
                f"{repo.repo} has no file {ref.filename}.",
                f"Files: {', '.join(sorted(models)) or 'no GGUF'}.",
            )
        first = quant.split_set(ref.filename)[0]
        filename, reason = first, "the file you named"
    elif ref.quant:
        match = [f for f in models if quant.normalize(quant.from_filename(f)) == ref.quant]
        if not match:
            listed = sorted(filter(None, map(quant.from_filename, models)))
            raise ModelNotFound(
                f"{repo.repo} has no {ref.quant.upper()} GGUF file.",
                f"Available: {', '.join(listed)}.",
            )
        filename, reason = sorted(match)[0], f"{ref.quant.upper()}: as asked"
    else:
        filename, reason = quant.choose_gguf_file(models, budget, 0, ctx)
    found = quant.from_filename(filename)
    tag = ref.filename or found or filename
    return _Choice(f"hf.co/{repo.repo}:{tag}", "gguf", _parts(filename, repo), found, reason)


def _parts(filename: str, repo: RepoFiles) -> tuple[str, ...]:
    parts = quant.split_set(filename)
    missing = [p for p in parts if p not in repo.sizes]
    if missing:
        raise ModelNotFound(
            f"{repo.repo} lacks part(s) of the split model {parts[0]}: {', '.join(missing)}.",
            "The repository may be incomplete; pick another quantization.",
        )
    return tuple(parts)


def _hf_choice(ref: ModelRef, repo: RepoFiles, budget: int, ctx: int) -> _Choice:
    if any(f.endswith(".gguf") for f in repo.sizes) or ref.filename or ref.quant:
        return _hf_gguf(ref, repo, budget, ctx)
    if "config.json" in repo.sizes and any(f.endswith(".safetensors") for f in repo.sizes):
        return _Choice(
            f"hf.co/{repo.repo}", "mlx", catalog.MLX_FILES, None, "MLX/safetensors directory"
        )
    raise ModelNotFound(
        f"{repo.repo} holds neither GGUF files nor safetensors weights.",
        "Impetus runs GGUF and MLX models.",
    )


def _present(settings: Settings, name: str) -> LocalModel | None:
    from impetus_cli.runtime.store import Store

    ours = Store(settings).manifests()
    return next((m for m in ours if m.name == name and m.path.exists()), None)


def _fetch(
    choice: _Choice,
    repo: RepoFiles,
    progress: ProgressFn | None,
    say: Callable[[str], None],
) -> tuple[Path, int, tuple[Path, ...]]:
    """(path, bytes, files created) of the chosen model, all parts on disk and verified."""
    if choice.fmt != "gguf":
        fetched = download_dir(repo, choice.files, progress)
        files = [p for p in fetched.path.iterdir() if p.is_file()]
        return fetched.path, sum(p.stat().st_size for p in files), fetched.created
    missing = [f for f in choice.files if f not in repo.sizes]
    if missing:
        raise ModelNotFound(
            f"{repo.repo} has no file {missing[0]}.",
            "The catalog may be out of date: try hf:" + repo.repo,
        )
    check_disk(sum(repo.sizes[f] for f in choice.files))
    paths: list[Path] = []
    created: list[Path] = []
    for filename in choice.files:
        spec = FileSpec(
            repo.repo, repo.commit, filename, repo.sizes[filename], repo.hashes.get(filename)
        )
        fetched = download_file(spec, progress, say)
        paths.append(fetched.path)
        created += fetched.created
    return paths[0], sum(p.stat().st_size for p in paths), tuple(created)


def _catalog_choice(ref: ModelRef, budget: int, ctx: int) -> tuple[str, _Choice]:
    target = catalog.resolve(ref, budget, ctx)
    files = tuple(target.files)
    if target.format == "gguf" and len(files) == 1:
        files = tuple(quant.split_set(files[0]))  # a catalog entry may name only the first part
    return target.repo, _Choice(target.name, target.format, files, target.quant, target.reason)


def _already_here(ref: ModelRef, ref_text: str, settings: Settings) -> LocalModel | None:
    """The built-in model, or a model pulled before under any spelling of a Hub reference."""
    from impetus_cli.runtime.store import Store, builtin_model, find

    if catalog.is_builtin(ref) and (builtin := builtin_model(settings)) is not None:
        return builtin
    if ref.kind == "hf":  # no need to ask the Hub
        return find(ref_text, [m for m in Store(settings).manifests() if m.path.exists()])
    return None


def _manifest(
    choice: _Choice, repo: RepoFiles, fetched: tuple[Path, int, tuple[Path, ...]]
) -> LocalModel:
    """The model a pull registers, owning the files it created (``fetched[2]``)."""
    path, size, created = fetched
    gguf = choice.fmt == "gguf"
    model = LocalModel(
        name=choice.name,
        format=choice.fmt,
        path=path,
        origin="impetus",
        size_bytes=size,
        quantization=choice.quant,
        repo=repo.repo,
        filename=choice.files[0] if gguf else None,
        revision=repo.commit,
        sha256=repo.hashes.get(choice.files[0]) if gguf else None,
        created=time.time(),
        owned_files=created,
        base_model=_is_base(path),
    )
    return model


def _is_base(path: Path) -> bool | None:
    """Whether the pulled files are a base model (recorded, so `list` needs no file read)."""
    from impetus_cli.runtime.inspect import inspect_model

    try:
        return inspect_model(path).base_model
    except (ImpetusError, OSError, ValueError):
        return None


def pull(
    ref_text: str,
    settings: Settings,
    progress: ProgressFn | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> LocalModel:
    """Download (or find) a model and register it; returns the registered model."""
    from impetus_cli.runtime.hardware import detect, memory_budget
    from impetus_cli.runtime.store import Store

    ref = parse_ref(ref_text)
    if ref.kind == "path":
        raise ImpetusError(
            f"{ref_text} is a local path: it needs no pull.",
            f"Serve it directly (impetus chat {ref_text}), or register it: impetus import {ref_text}",
        )
    if (here := _already_here(ref, ref_text, settings)) is not None:
        builtin = "the built-in model: " if here.origin == "builtin" else ""
        say(f"{here.name} is {builtin}already here.")
        return here
    budget, ctx = memory_budget(detect(), settings), settings.min_ctx
    repo: RepoFiles | None = None
    if ref.kind == "catalog":  # the catalog decides without asking the Hub
        repo_id, choice = _catalog_choice(ref, budget, ctx)
    else:
        repo = repo_files(repo_id := ref.name)
        choice = _hf_choice(ref, repo, budget, ctx)
    if (present := _present(settings, choice.name)) is not None:
        say(f"{choice.name} is already here.")
        return present
    repo = repo or repo_files(repo_id)
    say(f"{choice.name}: {choice.reason}")
    model = _manifest(choice, repo, _fetch(choice, repo, progress, say))
    Store(settings).add(model)
    return model
