"""What `impetus rm` deletes: the files a pull or an import created, and nothing that another
manifest, another snapshot of the Hugging Face cache or another tool still uses.

A pull records what it created in its manifest's ``owned_files``: the snapshot links it made
and the blobs it downloaded (a pull that found a file already present owns nothing of it); an
import with ``--copy`` records its copies, one without records nothing. Manifests written before
that rule (version 1) listed their snapshot links only and took the blobs behind them as theirs:
those blobs are still removed, unless another snapshot links to them.
"""

from __future__ import annotations

import os
from pathlib import Path

from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.fs import remove_empty_dirs
from impetus_cli.runtime.types import LocalModel


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


class _InUse:
    """The paths other manifests use: as written (links) and resolved (the files behind)."""

    def __init__(self, others: list[LocalModel]):
        self.paths: set[Path] = set()
        self.real: set[Path] = set()
        self.dirs: list[Path] = []
        for model in others:
            for path in (model.path, *model.owned_files):
                self.paths.add(path)
                self.real.add(_real(path))
            if model.path.is_dir():
                self.dirs += [model.path, _real(model.path)]

    def link(self, path: Path) -> bool:
        return path in self.paths or any(d in path.parents for d in self.dirs)

    def file(self, path: Path) -> bool:
        real = _real(path)
        return real in self.real or any(d in real.parents for d in self.dirs)


def _snapshots_dir(path: Path) -> Path | None:
    return next((p for p in path.parents if p.name == "snapshots"), None)


def linked_elsewhere(blob: Path) -> bool:
    """Whether a snapshot of the blob's Hugging Face cache repo still links to it."""
    if blob.parent.name != "blobs":
        return False
    target = _real(blob)
    snapshots = blob.parent.parent / "snapshots"
    return any(p.is_symlink() and _real(p) == target for p in snapshots.rglob("*"))


def delete_owned(
    model: LocalModel, version: int, others: list[LocalModel], settings: Settings
) -> list[Path]:
    """Delete what ``model``'s manifest owns and nothing else uses; return what was deleted."""
    in_use = _InUse(others)
    links = [p for p in model.owned_files if p.is_symlink()]
    files = [p for p in model.owned_files if not p.is_symlink()]
    if version < 2:
        files += [_real(p) for p in links]
    deleted: list[Path] = []
    for link in links:
        if in_use.link(link):
            continue
        link.unlink(missing_ok=True)
        deleted.append(link)
        if (snapshots := _snapshots_dir(link)) is not None:
            remove_empty_dirs(link.parent, snapshots)
    copies = settings.home / "models"
    for file in dict.fromkeys(files):
        if not file.exists() or in_use.file(file) or linked_elsewhere(file):
            continue
        file.unlink()
        deleted.append(file)
        if copies in file.parents:
            remove_empty_dirs(file.parent, copies)
    return deleted
