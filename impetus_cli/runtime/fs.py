"""Writing state files so that nothing is ever half-written, and logs that only we can read.

Every file Impetus keeps (manifests, settings it merges into other tools' files, bench history)
goes through ``atomic_write_*``: the bytes go to a temporary file in the same directory, which
then replaces the old one, so a reader (or a crash) sees the old content or the new, never a
part. A path that is a symlink is written through: the file it points at is replaced and the
link stays. An existing file keeps its permission bits.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

NEW_FILE_MODE = 0o644
PRIVATE_MODE = 0o600


def write_target(path: Path) -> Path:
    """The file a write to ``path`` must replace: the end of its symlink chain, else ``path``."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself is synced
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes, *, fsync: bool = True, mode: int = NEW_FILE_MODE
) -> None:
    """Replace ``path`` with ``data`` in one step.

    ``mode`` applies to a new file; an existing one keeps its own. ``fsync=False`` is for
    bookkeeping that may be lost in a power cut (last-used times), never for real state.
    """
    target = write_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # a new file gets ``mode``
        mode = os.stat(target).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(target.parent)


def atomic_write_text(
    path: Path, text: str, *, fsync: bool = True, mode: int = NEW_FILE_MODE
) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync, mode=mode)


def atomic_write_json(
    path: Path, data: Any, *, fsync: bool = True, mode: int = NEW_FILE_MODE
) -> None:
    """JSON that every parser accepts: NaN and infinities raise ValueError instead of being
    written as the non-standard ``NaN`` / ``Infinity``."""
    text = json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"
    atomic_write_text(path, text, fsync=fsync, mode=mode)


def open_private_log(path: Path) -> BinaryIO:
    """Open a log file for appending, readable by its owner only (0600), even if it existed
    with wider permissions: logs can hold prompts, paths and request details."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def remove_empty_dirs(start: Path, stop: Path) -> None:
    """Remove ``start`` and its parents while they are empty, never ``stop`` or above it."""
    current = start
    while current != stop and stop in current.parents:
        with contextlib.suppress(OSError):  # not empty, or already gone: either way, stop
            current.rmdir()
        if current.exists():
            return
        current = current.parent
