"""`impetus pull`: resolve a name, download through huggingface_hub, verify, register.

huggingface_hub does all transfer, so HF_ENDPOINT (mirrors), HF_TOKEN (gated repos) and the
HF cache (shared with the `hf` CLI) work as users expect, and an interrupted download resumes
from its `.incomplete` file. We add: the choice of quantization, a free-space check, sha256
verification against the Hub's LFS metadata, and a manifest written only after all of that.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus_cli.errors import (
    CorruptModel,
    DownloadError,
    ImpetusError,
    InsufficientDisk,
    ModelNotFound,
)
from impetus_cli.runtime import catalog
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.names import parse_ref
from impetus_cli.runtime.types import LocalModel, ModelRef

MARGIN = 200_000_000  # free space to keep beyond the download


@dataclass(frozen=True)
class PullProgress:
    filename: str
    downloaded: int
    total: int | None


ProgressFn = Callable[[PullProgress], None]


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _cache_dir() -> Path:
    """Read at call time: huggingface_hub reads HF_HUB_CACHE once, at import."""
    from impetus_cli.runtime.discovery import hf_cache_dir

    return hf_cache_dir()


@contextlib.contextmanager
def hub_errors(repo: str, filename: str | None = None) -> Iterator[None]:
    """huggingface_hub's exceptions -> our errors with a message and a hint."""
    from huggingface_hub import errors as hf

    what = f"{repo}/{filename}" if filename else repo
    try:
        yield
    except hf.GatedRepoError as exc:
        raise DownloadError(
            f"{repo} is gated: accept its license on the Hub first.",
            "Then set HF_TOKEN and pull again.",
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        raise ModelNotFound(
            f"No repository {repo} on the Hub (or it is private).",
            "Check the name; private repos need HF_TOKEN.",
        ) from exc
    except (hf.RemoteEntryNotFoundError, hf.EntryNotFoundError) as exc:
        raise ModelNotFound(
            f"{what} does not exist on the Hub.", "`impetus pull hf:org/repo` picks a file for you."
        ) from exc
    except hf.LocalEntryNotFoundError as exc:
        raise DownloadError(
            f"Could not reach the Hub ({_endpoint() or 'huggingface.co'}) to download {what}.",
            "Check the network or HF_ENDPOINT; an interrupted pull resumes when you run it again.",
        ) from exc
    except hf.HfHubHTTPError as exc:
        raise DownloadError(
            f"The Hub refused {what}: {exc}".splitlines()[0], "Try again later."
        ) from exc
    except (
        OSError,
        ValueError,
    ) as exc:  # connection errors (httpx's derive from these or from ours below)
        raise DownloadError(
            f"Download of {what} failed: {exc}".splitlines()[0],
            "Run the same pull again: it resumes.",
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise DownloadError(
                f"Could not reach the Hub for {what}: {exc}".splitlines()[0],
                "Check the network or HF_ENDPOINT, then pull again: it resumes.",
            ) from exc
        raise


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint())


def _repo_files(repo: str) -> tuple[str, dict[str, int], dict[str, str]]:
    """(commit, {file: size}, {file: sha256}) from the Hub's file metadata."""
    with hub_errors(repo):
        info = _api().model_info(repo, files_metadata=True)
    sizes, hashes = {}, {}
    for sibling in info.siblings or []:
        sizes[sibling.rfilename] = int(sibling.size or 0)
        if sibling.lfs is not None:
            hashes[sibling.rfilename] = sibling.lfs.sha256
    return str(info.sha), sizes, hashes


def _progress_bar(callback: ProgressFn | None, filename: str) -> type | None:
    forward: ProgressFn
    """A tqdm class that forwards byte counts to ``callback`` (huggingface_hub's tqdm_class)."""
    if callback is None:
        return None
    forward = callback
    from tqdm.auto import tqdm

    class Forward(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["disable"] = True  # we draw our own bar
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)
            forward(PullProgress(filename, self.done, self.total))

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            forward(PullProgress(filename, self.done, self.total))
            return super().update(n)

    return Forward


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_disk(need: int) -> None:

    cache = _cache_dir()
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need + MARGIN:
        raise InsufficientDisk(
            f"Not enough disk space: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free in {cache}.",
            "Free some space or point HF_HUB_CACHE at a larger disk.",
        )


def _download_file(
    repo: str, filename: str, revision: str, size: int, sha: str | None, progress: ProgressFn | None
) -> Path:
    """One file into the HF cache layout (blobs/<etag>, snapshots/<commit>/<file> -> blob).

    huggingface_hub 2.x downloads into a per-process temporary file, so a killed pull starts
    over. We keep `blobs/<etag>.incomplete` across processes instead and let huggingface_hub's
    own `http_get` continue it with a Range request; its retries cover dropped connections.
    """
    from huggingface_hub import file_download, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    storage = _cache_dir() / file_download.repo_folder_name(repo_id=repo, repo_type="model")
    pointer = storage / "snapshots" / revision / filename
    if pointer.exists():
        return pointer
    with hub_errors(repo, filename):
        url = hf_hub_url(repo, filename, revision=revision, endpoint=_endpoint())
        meta = get_hf_file_metadata(url, endpoint=_endpoint())
        blob = storage / "blobs" / str(meta.etag)
        part = blob.with_name(blob.name + ".incomplete")
        blob.parent.mkdir(parents=True, exist_ok=True)
        done = part.stat().st_size if part.exists() else 0
        _check_disk(size - done)
        with part.open("ab") as fh:
            file_download.http_get(
                meta.location,
                fh,
                resume_size=done,
                headers=build_hf_headers(),
                expected_size=meta.size,
                displayed_filename=filename,
                tqdm_class=_progress_bar(progress, filename),
            )
    if sha and sha256_of(part) != sha:
        part.unlink(missing_ok=True)  # the next pull starts clean
        raise CorruptModel(
            f"{filename} failed verification: its sha256 differs from the Hub's.",
            "The download was corrupted; pull again.",
        )
    os.replace(part, blob)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return pointer


def _download_dir(
    repo: str,
    revision: str,
    patterns: tuple[str, ...],
    sizes: dict[str, int],
    progress: ProgressFn | None,
) -> Path:
    from fnmatch import fnmatch

    from huggingface_hub import snapshot_download

    _check_disk(sum(s for f, s in sizes.items() if any(fnmatch(f, p) for p in patterns)))
    with hub_errors(repo):
        return Path(
            snapshot_download(
                repo,
                revision=revision,
                allow_patterns=list(patterns),
                endpoint=_endpoint(),
                cache_dir=_cache_dir(),
                tqdm_class=_progress_bar(progress, repo),
            )
        )


def _hf_choice(ref: ModelRef, sizes: dict[str, int], budget: int, ctx: int) -> tuple[str, str]:
    ggufs = {f: s for f, s in sizes.items() if f.endswith(".gguf")}
    if ref.filename:
        if ref.filename not in sizes:
            raise ModelNotFound(
                f"{ref.name} has no file {ref.filename}.",
                f"Files: {', '.join(sorted(ggufs)) or 'no GGUF'}.",
            )
        return ref.filename, "the file you named"
    if ref.quant:
        match = [f for f in ggufs if (catalog.quant_of(f) or "").lower() == ref.quant]
        if not match:
            raise ModelNotFound(
                f"{ref.name} has no {ref.quant.upper()} GGUF file.",
                f"Available: {', '.join(sorted(filter(None, map(catalog.quant_of, ggufs))))}.",
            )
        return sorted(match)[0], f"{ref.quant.upper()}: as asked"
    return catalog.choose_gguf_file(ggufs, budget, 0, ctx)


def pull(
    ref_text: str,
    settings: Settings,
    progress: ProgressFn | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> LocalModel:
    """Download (or find) a model and register it; returns the registered model."""
    from impetus_cli.runtime.hardware import detect, memory_budget
    from impetus_cli.runtime.store import Store, builtin_model

    ref = parse_ref(ref_text)
    store = Store(settings)
    if ref.kind == "path":
        raise ImpetusError(
            f"{ref_text} is a local path: it needs no pull.",
            f"Serve it directly: impetus chat {ref_text}",
        )
    if catalog.is_builtin(ref) and (builtin := builtin_model(settings)) is not None:
        say(f"{builtin.name} is the built-in model: already installed.")
        return builtin
    budget, ctx = memory_budget(detect(), settings), settings.min_ctx
    if ref.kind == "catalog":
        target = catalog.resolve(ref, budget, ctx)
        name, repo, fmt, files, quant, reason = (
            target.name,
            target.repo,
            target.format,
            target.files,
            target.quant,
            target.reason,
        )
    else:
        repo, name, quant, fmt, files, reason = ref.name, "", None, "gguf", (), ""
    present = (
        next((m for m in store.manifests() if m.name == name and m.path.exists()), None)
        if name
        else None
    )
    if present is not None:
        say(f"{name} is already here.")
        return present
    commit, sizes, hashes = _repo_files(repo)
    if ref.kind == "hf":
        if any(f.endswith(".gguf") for f in sizes) or ref.filename or ref.quant:
            filename, reason = _hf_choice(ref, sizes, budget, ctx)
            files, quant = (filename,), catalog.quant_of(filename)
            name = f"hf.co/{repo}:{ref.filename or (quant or filename)}"
        elif "config.json" in sizes and any(f.endswith(".safetensors") for f in sizes):
            fmt, files, name, reason = (
                "mlx",
                ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"),
                f"hf.co/{repo}",
                "MLX/safetensors directory",
            )
        else:
            raise ModelNotFound(
                f"{repo} holds neither GGUF files nor safetensors weights.",
                "Impetus runs GGUF and MLX models.",
            )
        present = next((m for m in store.manifests() if m.name == name and m.path.exists()), None)
        if present is not None:
            say(f"{name} is already here.")
            return present
    say(f"{name}: {reason}")
    if fmt == "gguf":
        filename = files[0]
        if filename not in sizes:
            raise ModelNotFound(
                f"{repo} has no file {filename}.", "The catalog may be out of date: try hf:" + repo
            )
        path = _download_file(
            repo, filename, commit, sizes[filename], hashes.get(filename), progress
        )
        size, owned = path.stat().st_size, tuple[Path, ...]((path,))
    else:
        path = _download_dir(repo, commit, files, sizes, progress)
        owned = tuple(p for p in path.iterdir() if p.is_file())
        size = sum(p.stat().st_size for p in owned)
    model = LocalModel(
        name=name,
        format=fmt,
        path=path,
        origin="impetus",
        size_bytes=size,
        quantization=quant,  # type: ignore[arg-type]
        repo=repo,
        filename=files[0] if fmt == "gguf" else None,
        revision=commit,
        sha256=hashes.get(files[0]) if fmt == "gguf" else None,
        created=time.time(),
        owned_files=owned,
    )
    store.add(model)
    return model
