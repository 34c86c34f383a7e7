"""`impetus import PATH`: register a model from elsewhere (a fine-tune, a file another tool
downloaded) under a name that every verb and the server accept, as LM Studio's `lms import` does.

A GGUF file (or every part of a split GGUF), or an MLX / safetensors directory. The files stay
where they are and the manifest owns none of them, so `impetus rm` forgets the name and deletes
nothing; with ``copy`` they are copied under IMPETUS_HOME/models first and the copies are owned.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from impetus_cli.errors import ImpetusError, InsufficientDisk, UnsupportedFormat
from impetus_cli.runtime import quant
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.types import Format, LocalModel

if TYPE_CHECKING:
    from impetus_cli.runtime.store import Store

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
RESERVED_PREFIXES = ("hf:", "hf.co/", "huggingface.co/", "https:", "http:", "ollama/", "lmstudio/")
MARGIN = 200_000_000  # free space to keep beyond a copy


def copies_dir(settings: Settings) -> Path:
    return settings.home / "models"


def _fail(message: str, hint: str) -> ImpetusError:
    return ImpetusError(message, hint, param="name")


def default_name(path: Path, fmt: Format) -> str:
    """``Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf`` -> ``qwen2.5-coder-7b-instruct:q4_k_m``; an MLX
    directory by its own name."""
    if fmt != "gguf":
        stem, tag = path.name, None
    else:
        part = quant.split_part(path.name)
        stem = part.stem if part else path.name.removesuffix(".gguf").removesuffix(".GGUF")
        tag = quant.from_filename(path.name)
        stem = quant.without_quant(stem) if tag else stem
    base = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"
    return f"{base}:{tag.lower()}" if tag else base


def check_name(name: str) -> str:
    """A name every verb reads as a name: not a path, not a Hub reference, no odd characters."""
    name = name.strip()
    if not NAME.match(name) or name.lower().endswith(".gguf"):
        raise _fail(
            f"{name!r} cannot name a model.",
            "Use letters, digits and . _ - : / (not ending in .gguf), e.g. my-coder:q4_k_m.",
        )
    if name.lower().startswith(RESERVED_PREFIXES):
        raise _fail(
            f"{name!r} starts like a Hub or another tool's name.", "Choose a name of your own."
        )
    return name


def model_files(path: Path, fmt: Format, say: Callable[[str], None]) -> tuple[Path, list[Path]]:
    """(the path to register, every file it consists of): all parts of a split GGUF (the first
    part is the one to load), or the files of a directory."""
    if fmt != "gguf":
        return path, sorted(p for p in path.rglob("*") if p.is_file())
    parts = [path.with_name(n) for n in quant.split_set(path.name)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ImpetusError(
            f"{path.name} is one part of a split model; missing: {', '.join(missing)}.",
            "Put every part in the same directory, then import the first one.",
        )
    if parts[0] != path:
        say(f"{path.name} is part of a split model: registering its first part, {parts[0].name}.")
    return parts[0], parts


def detect(path: Path) -> Format:
    from impetus_cli.runtime.inspect import detect_format

    if path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf")):
        raise UnsupportedFormat(
            f"{path} is a directory of GGUF files.", "Import one .gguf file (a model) from it."
        )
    return detect_format(path)


def mlx_quant(path: Path) -> str | None:
    try:
        bits = json.loads((path / "config.json").read_text(encoding="utf-8"))["quantization"][
            "bits"
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"{bits}bit"


def _copy(files: list[Path], root: Path, dest: Path) -> list[Path]:
    """Copy ``files`` (under ``root``) into ``dest``, each under a temporary name then renamed,
    so an interrupted copy never leaves a file that looks complete."""
    need = sum(f.stat().st_size for f in files)
    probe = dest
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need + MARGIN:
        raise InsufficientDisk(
            f"Not enough disk space to copy: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free.",
            "Import without --copy (the file stays where it is), or free some space.",
        )
    copies = []
    for file in files:
        target = dest / file.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            shutil.copyfile(file, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        copies.append(target)
    return copies


def import_model(
    path_text: str,
    settings: Settings,
    name: str | None = None,
    copy: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> LocalModel:
    """Register the model at ``path_text``; returns the registered model."""
    from impetus_cli.runtime.store import Store, manifest_file

    path = Path(path_text).expanduser().absolute()
    if not path.exists():
        raise ImpetusError(f"{path} does not exist.", "Check the path.")
    fmt = detect(path)
    path, files = model_files(path, fmt, say)
    chosen = check_name(name or default_name(path, fmt))
    store = Store(settings)
    _check_free(store, chosen, path, explicit=name is not None)
    if manifest_file(settings, chosen).exists():
        raise _fail(f"The name {chosen!r} is taken.", "Choose another with --name.")
    owned: tuple[Path, ...] = ()
    if copy:
        root = path if fmt != "gguf" else path.parent
        dest = copies_dir(settings) / manifest_file(settings, chosen).stem
        if dest.exists():
            raise _fail(f"{dest} already exists.", "Remove it, or choose another --name.")
        owned = tuple(_copy(files, root, dest))
        path = dest if fmt != "gguf" else dest / path.name
    model = LocalModel(
        name=chosen,
        format=fmt,
        path=path,
        origin="imported",
        size_bytes=sum(f.stat().st_size for f in files),
        quantization=quant.from_filename(path.name) if fmt == "gguf" else mlx_quant(path),
        filename=path.name if fmt == "gguf" else None,
        created=time.time(),
        owned_files=owned,
        base_model=_is_base(path),
    )
    store.add(model)
    return model


def _check_free(store: Store, name: str, path: Path, *, explicit: bool) -> None:
    """Refuse a name already in use, and a file already registered (unless it is another
    tool's file given a name of our own: the import then lists it under that name)."""
    real = Path(os.path.realpath(path))
    for model in store.list() + store.manifests():
        if model.name.casefold() == name.casefold():
            raise _fail(
                f"The name {name!r} is taken by {model.origin}.", "Choose another with --name."
            )
        if Path(os.path.realpath(model.path)) != real:
            continue
        ours = model.origin in ("impetus", "imported", "builtin")
        if ours or not explicit:
            # Another tool's file may get a name of ours (--name); one of ours has its name.
            other = "" if ours else ", or give it your own with --name"
            raise _fail(
                f"{path} is already available as {model.name}.",
                f"Use that name (impetus chat {model.name}){other}.",
            )


def _is_base(path: Path) -> bool | None:
    """Whether the files are a base model (recorded, so `list` needs no file read)."""
    from impetus_cli.runtime.inspect import inspect_model

    try:
        return inspect_model(path).base_model
    except (ImpetusError, OSError, ValueError):
        return None
