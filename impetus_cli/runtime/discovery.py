"""Models other tools already hold: the Hugging Face cache, LM Studio and Ollama.

Found by walking their directories (no imports, no network: `impetus list` stays fast). They are
listed with their origin and served in place; Impetus never deletes them. A file that cannot be
read (a broken link, no permission, a split model with a missing part) is skipped and reported
with the reason (`Found.skipped`, shown by `impetus doctor`): one bad file never hides the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from impetus_cli.runtime import quant
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.types import Format, LocalModel, Origin

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


@dataclass(frozen=True)
class Skipped:
    """A file that looked like a model but could not be listed, and why."""

    path: Path
    reason: str
    origin: str


@dataclass(frozen=True)
class Found:
    models: tuple[LocalModel, ...]
    skipped: tuple[Skipped, ...]


def hf_cache_dir() -> Path:
    """Read at call time: huggingface_hub reads HF_HUB_CACHE once, at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    return home / "hub"


def unreadable(path: Path, exc: OSError | None = None) -> str | None:
    """Why ``path`` cannot be read, or None when it can."""
    if exc is None:
        try:
            path.stat()
        except OSError as error:
            exc = error
        else:
            return None if os.access(path, os.R_OK) else "cannot be read: permission denied"
    if isinstance(exc, FileNotFoundError) and path.is_symlink():
        return f"a broken link: its target {os.readlink(path)} does not exist"
    return f"cannot be read: {exc.strerror or exc}"


class _Walk:
    """One walk over other tools' directories, remembering what it had to skip."""

    def __init__(self) -> None:
        self.skipped: list[Skipped] = []

    def size(self, path: Path, origin: str) -> int | None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            self.skip(path, unreadable(path, exc) or "cannot be read", origin)
            return None
        if not os.access(path, os.R_OK):
            self.skip(path, "cannot be read: permission denied", origin)
            return None
        return size

    def skip(self, path: Path, reason: str, origin: str) -> None:
        self.skipped.append(Skipped(path, reason, origin))

    def gguf_sets(self, files: Iterable[Path], origin: str) -> Iterator[tuple[Path, int]]:
        """(first file, total bytes) per model: a whole file, or all parts of a split set."""
        files = sorted(files)
        names = {f.name for f in files}
        for file in files:
            part = quant.split_part(file.name)
            if part is not None and part.index != 1:
                if part.names()[0] not in names:  # no first part: nothing loads this one
                    self.skip(
                        file,
                        f"part {part.index} of a split model whose first part is missing",
                        origin,
                    )
                continue
            parts = [file.with_name(n) for n in part.names()] if part else [file]
            missing = [p.name for p in parts if p.name not in names]
            if missing:
                self.skip(file, f"a split model with missing parts: {', '.join(missing)}", origin)
                continue
            sizes = [self.size(p, origin) for p in parts]
            if all(s is not None for s in sizes):
                yield file, sum(s for s in sizes if s is not None)

    def dir_size(self, path: Path, origin: str) -> int | None:
        sizes = [self.size(p, origin) for p in path.iterdir() if p.is_file() or p.is_symlink()]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


def _model(
    name: str, fmt: Format, path: Path, origin: Origin, size: int, repo: str | None = None
) -> LocalModel:
    quantization = quant.from_filename(path.name) if fmt == "gguf" else None
    return LocalModel(
        name=name,
        format=fmt,
        path=path,
        origin=origin,
        size_bytes=size,
        quantization=quantization,
        repo=repo,
        filename=path.name if fmt == "gguf" else None,
    )


def _mlx_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0  # a broken snapshot link sorts last


def _hf_repo(walk: _Walk, repo_dir: Path) -> Iterator[LocalModel]:
    repo = repo_dir.name.removeprefix("models--").replace("--", "/")
    snapshots = sorted((repo_dir / "snapshots").glob("*"), key=_mtime, reverse=True)
    if not snapshots:
        return
    snap = snapshots[0]  # the newest revision
    for gguf, size in walk.gguf_sets(snap.rglob("*.gguf"), "hf-cache"):
        tag = quant.from_filename(gguf.name) or gguf.stem
        yield _model(f"hf.co/{repo}:{tag}", "gguf", gguf, "hf-cache", size, repo)
    if _mlx_dir(snap) and (total := walk.dir_size(snap, "hf-cache")) is not None:
        yield _model(f"hf.co/{repo}", "mlx", snap, "hf-cache", total, repo)


def hf_cache_models(walk: _Walk, cache: Path) -> Iterator[LocalModel]:
    """`models--org--repo/snapshots/<rev>/`: each GGUF file, or the snapshot as an MLX dir."""
    if not cache.is_dir():
        return
    for repo_dir in sorted(cache.glob("models--*")):
        try:
            yield from _hf_repo(walk, repo_dir)
        except OSError as exc:  # a directory we may not enter: skip it, keep the rest
            walk.skip(repo_dir, unreadable(repo_dir, exc) or "cannot be read", "hf-cache")


def lmstudio_models(walk: _Walk, root: Path) -> Iterator[LocalModel]:
    """`<publisher>/<repo>/<file>.gguf`, or `<publisher>/<repo>/` holding an MLX model."""
    if not root.is_dir():
        return
    for repo_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        publisher, repo = repo_dir.parent.name, repo_dir.name
        try:
            # vision projectors (mmproj-*) are not models on their own
            files = [f for f in repo_dir.glob("*.gguf") if not f.name.startswith("mmproj")]
            for gguf, size in walk.gguf_sets(files, "lmstudio"):
                stem = gguf.stem
                yield _model(f"lmstudio/{publisher}/{stem}", "gguf", gguf, "lmstudio", size)
            if _mlx_dir(repo_dir) and (total := walk.dir_size(repo_dir, "lmstudio")) is not None:
                yield _model(f"lmstudio/{publisher}/{repo}", "mlx", repo_dir, "lmstudio", total)
        except OSError as exc:
            walk.skip(repo_dir, unreadable(repo_dir, exc) or "cannot be read", "lmstudio")


def _ollama_blob(root: Path, file: Path) -> Path | None:
    try:
        layers = json.loads(file.read_text(encoding="utf-8")).get("layers", [])
    except (OSError, ValueError, AttributeError):
        return None  # not a manifest of a model (Ollama keeps other files there too)
    layer = next(
        (x for x in layers if isinstance(x, dict) and x.get("mediaType") == OLLAMA_MODEL_LAYER),
        None,
    )
    if layer is None or ":" not in str(layer.get("digest")):
        return None
    return root / "blobs" / str(layer["digest"]).replace(":", "-")


def ollama_models(walk: _Walk, root: Path) -> Iterator[LocalModel]:
    """Manifests under `manifests/<registry>/<namespace>/<model>/<tag>` name their GGUF blob."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for file in sorted(p for p in manifests.glob("*/*/*/*") if p.is_file()):
        blob = _ollama_blob(root, file)
        if blob is None:
            continue
        size = walk.size(blob, "ollama")
        if size is None:
            continue
        namespace, model, tag = file.parent.parent.name, file.parent.name, file.name
        name = (
            f"ollama/{model}:{tag}"
            if namespace == "library"
            else f"ollama/{namespace}/{model}:{tag}"
        )
        yield _model(name, "gguf", blob, "ollama", size)


def discover(settings: Settings, exclude: Iterable[Path] = ()) -> Found:
    """Everything other tools hold, skipping files in ``exclude`` (what our manifests name)."""
    ours = {Path(os.path.realpath(p)) for p in exclude}
    walk = _Walk()
    found = [
        *hf_cache_models(walk, hf_cache_dir()),
        *lmstudio_models(walk, settings.lmstudio_models),
        *ollama_models(walk, settings.ollama_models),
    ]
    models = tuple(m for m in found if Path(os.path.realpath(m.path)) not in ours)
    return Found(models, tuple(walk.skipped))
