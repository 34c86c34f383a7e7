"""Models other tools already hold: the Hugging Face cache, LM Studio and Ollama.

Found by walking their directories (no imports, no network: `impetus list` stays fast). They are
listed with their origin and served in place; Impetus never deletes them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.types import Format, LocalModel, Origin

QUANT = re.compile(r"(?i)(?<![a-z0-9])(i?q\d_[a-z0-9_]+?|q\d_\d|f16|bf16|f32)(?=[.\-]|$)")
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


def quant_from_name(filename: str) -> str | None:
    match = QUANT.search(Path(filename).stem)
    return match.group(1).upper() if match else None


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    return home / "hub"


def _mlx_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def _model(
    name: str,
    fmt: Format,
    path: Path,
    origin: Origin,
    size: int,
    quant: str | None,
    repo: str | None = None,
) -> LocalModel:
    return LocalModel(
        name=name,
        format=fmt,
        path=path,
        origin=origin,
        size_bytes=size,
        quantization=quant,
        repo=repo,
    )


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def hf_cache_models(cache: Path) -> Iterator[LocalModel]:
    """`models--org--repo/snapshots/<rev>/`: each GGUF file, or the snapshot as an MLX dir."""
    if not cache.is_dir():
        return
    for repo_dir in sorted(cache.glob("models--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/")
        snapshots = sorted(
            (repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        if not snapshots:
            continue
        snap = snapshots[0]  # the newest revision
        for gguf in sorted(snap.rglob("*.gguf")):
            quant = quant_from_name(gguf.name)
            tag = quant or gguf.stem
            yield _model(
                f"hf.co/{repo}:{tag}", "gguf", gguf, "hf-cache", gguf.stat().st_size, quant, repo
            )
        if _mlx_dir(snap):
            yield _model(f"hf.co/{repo}", "mlx", snap, "hf-cache", _dir_size(snap), None, repo)


def lmstudio_models(root: Path) -> Iterator[LocalModel]:
    """`<publisher>/<repo>/<file>.gguf`, or `<publisher>/<repo>/` holding an MLX model."""
    if not root.is_dir():
        return
    for repo_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        publisher, repo = repo_dir.parent.name, repo_dir.name
        for gguf in sorted(repo_dir.glob("*.gguf")):
            if gguf.name.startswith("mmproj"):
                continue  # vision projectors are not models on their own
            yield _model(
                f"lmstudio/{publisher}/{gguf.stem}",
                "gguf",
                gguf,
                "lmstudio",
                gguf.stat().st_size,
                quant_from_name(gguf.name),
            )
        if _mlx_dir(repo_dir):
            yield _model(
                f"lmstudio/{publisher}/{repo}",
                "mlx",
                repo_dir,
                "lmstudio",
                _dir_size(repo_dir),
                None,
            )


def ollama_models(root: Path) -> Iterator[LocalModel]:
    """Manifests under `manifests/<registry>/<namespace>/<model>/<tag>` name their GGUF blob."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for file in sorted(p for p in manifests.glob("*/*/*/*") if p.is_file()):
        try:
            layers = json.loads(file.read_text(encoding="utf-8")).get("layers", [])
        except (OSError, ValueError, AttributeError):
            continue
        layer = next(
            (x for x in layers if isinstance(x, dict) and x.get("mediaType") == OLLAMA_MODEL_LAYER),
            None,
        )
        if layer is None or ":" not in str(layer.get("digest")):
            continue
        blob = root / "blobs" / str(layer["digest"]).replace(":", "-")
        if not blob.exists():
            continue
        namespace, model, tag = file.parent.parent.name, file.parent.name, file.name
        name = (
            f"ollama/{model}:{tag}"
            if namespace == "library"
            else f"ollama/{namespace}/{model}:{tag}"
        )
        yield _model(name, "gguf", blob, "ollama", blob.stat().st_size, None)


def discover(settings: Settings) -> list[LocalModel]:
    """Everything other tools hold, skipping files our own manifests already point at."""
    from impetus_cli.runtime.store import Store

    ours = {m.path.resolve() for m in Store(settings).manifests()}
    found = [
        *hf_cache_models(hf_cache_dir()),
        *lmstudio_models(settings.lmstudio_models),
        *ollama_models(settings.ollama_models),
    ]
    return [m for m in found if m.path.resolve() not in ours]
