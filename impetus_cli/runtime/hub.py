"""Transfers from the Hugging Face Hub into its cache, safe against faults and each other.

huggingface_hub does all transfer, so HF_ENDPOINT (mirrors), HF_TOKEN (gated repos) and the
HF cache (shared with the `hf` CLI) work as users expect. We add: resume from the blob's
`.incomplete` file across processes, sha256 verification against the Hub's LFS metadata, a
free-space check, a lock per blob (the same lock file huggingface_hub takes, so two pulls, or a
pull and an `hf download`, never write one file at once), and a record of what a transfer
created, so that `impetus rm` deletes only that.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus_cli.errors import CorruptModel, DownloadError, InsufficientDisk, ModelNotFound
from impetus_cli.runtime.discovery import hf_cache_dir

MARGIN = 200_000_000  # free space to keep beyond the download


@dataclass(frozen=True)
class PullProgress:
    filename: str
    downloaded: int
    total: int | None


ProgressFn = Callable[[PullProgress], None]
SayFn = Callable[[str], None]


@dataclass(frozen=True)
class Fetched:
    """A file or directory in the HF cache, and the paths this transfer created there."""

    path: Path
    created: tuple[Path, ...]


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


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
            f"Could not reach the Hub ({endpoint() or 'huggingface.co'}) to download {what}.",
            "Check the network or HF_ENDPOINT; an interrupted pull resumes when you run it again.",
        ) from exc
    except hf.HfHubHTTPError as exc:
        raise DownloadError(
            f"The Hub refused {what}: {exc}".splitlines()[0], "Try again later."
        ) from exc
    except (OSError, ValueError) as exc:  # connections (httpx's derive from these), the disk
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


@dataclass(frozen=True)
class RepoFiles:
    """A Hub repository at one commit: its id as the Hub spells it, and its files' metadata."""

    repo: str
    commit: str
    sizes: dict[str, int]
    hashes: dict[str, str]  # sha256 of LFS files


def repo_files(repo: str) -> RepoFiles:
    from huggingface_hub import HfApi

    with hub_errors(repo):
        info = HfApi(endpoint=endpoint()).model_info(repo, files_metadata=True)
    sizes, hashes = {}, {}
    for sibling in info.siblings or []:
        sizes[sibling.rfilename] = int(sibling.size or 0)
        if sibling.lfs is not None:
            hashes[sibling.rfilename] = sibling.lfs.sha256
    return RepoFiles(str(getattr(info, "id", None) or repo), str(info.sha), sizes, hashes)


def _progress_bar(callback: ProgressFn | None, filename: str) -> type | None:
    """A tqdm class that forwards byte counts to ``callback`` (huggingface_hub's tqdm_class)."""
    if callback is None:
        return None
    forward: ProgressFn = callback
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


def check_disk(need: int) -> None:
    cache = hf_cache_dir()
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need + MARGIN:
        raise InsufficientDisk(
            f"Not enough disk space: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free in {cache}.",
            "Free some space or point HF_HUB_CACHE at a larger disk.",
        )


@contextlib.contextmanager
def blob_lock(storage: Path, etag: str, filename: str, say: SayFn) -> Iterator[None]:
    """Hold huggingface_hub's own lock for one blob; say so once if another process has it."""
    from filelock import FileLock, Timeout

    path = storage.parent / ".locks" / storage.name / f"{etag}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), mode=0o664)  # group-writable, as huggingface_hub makes it
    try:
        lock.acquire(blocking=False)
    except Timeout:
        say(f"Waiting for another download of {filename} to finish...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class FileSpec:
    """One file to fetch: its repo, commit, name, size and (when the Hub lists it) sha256."""

    repo: str
    revision: str
    filename: str
    size: int
    sha256: str | None


def _fetch_blob(spec: FileSpec, meta: Any, blob: Path, progress: ProgressFn | None) -> None:
    """Download into `blob.incomplete` (continuing what is there), verify, then rename."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import build_hf_headers

    part = blob.with_name(blob.name + ".incomplete")
    blob.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    check_disk(spec.size - done)
    if meta.size is None or done < meta.size:  # a pull killed after the last byte resumes here
        with hub_errors(spec.repo, spec.filename), part.open("ab") as fh:
            file_download.http_get(
                meta.location,
                fh,
                resume_size=done,
                headers=build_hf_headers(),
                expected_size=meta.size,
                displayed_filename=spec.filename,
                tqdm_class=_progress_bar(progress, spec.filename),
            )
    if spec.sha256 and sha256_of(part) != spec.sha256:
        part.unlink(missing_ok=True)  # the next pull starts clean
        raise CorruptModel(
            f"{spec.filename} failed verification: its sha256 differs from the Hub's.",
            "The download was corrupted; pull again.",
        )
    os.replace(part, blob)


def download_file(spec: FileSpec, progress: ProgressFn | None, say: SayFn) -> Fetched:
    """One file into the HF cache layout (blobs/<etag>, snapshots/<commit>/<file> -> blob).

    huggingface_hub 2.x downloads into a per-process temporary file, so a killed pull starts
    over. We keep `blobs/<etag>.incomplete` across processes instead and let huggingface_hub's
    own `http_get` continue it with a Range request; its retries cover dropped connections.
    """
    from huggingface_hub import file_download, get_hf_file_metadata, hf_hub_url

    storage = hf_cache_dir() / file_download.repo_folder_name(repo_id=spec.repo, repo_type="model")
    pointer = storage / "snapshots" / spec.revision / spec.filename
    if pointer.exists():
        return Fetched(pointer, ())  # someone else's (or an earlier pull's): not ours to delete
    with hub_errors(spec.repo, spec.filename):
        url = hf_hub_url(spec.repo, spec.filename, revision=spec.revision, endpoint=endpoint())
        meta = get_hf_file_metadata(url, endpoint=endpoint())
    blob = storage / "blobs" / str(meta.etag)
    with blob_lock(storage, str(meta.etag), spec.filename, say):
        if pointer.exists():
            return Fetched(pointer, ())  # the pull we waited for made it
        created = []
        if not blob.exists():
            _fetch_blob(spec, meta, blob, progress)
            created.append(blob)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.unlink(missing_ok=True)  # a broken link left by someone: replaced by a good one
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return Fetched(pointer, (pointer, *created))


def download_dir(
    repo: RepoFiles, patterns: tuple[str, ...], progress: ProgressFn | None
) -> Fetched:
    """The files matching ``patterns`` as one snapshot directory (an MLX model)."""
    from fnmatch import fnmatch

    from huggingface_hub import file_download, snapshot_download

    storage = hf_cache_dir() / file_download.repo_folder_name(repo_id=repo.repo, repo_type="model")
    check_disk(sum(s for f, s in repo.sizes.items() if any(fnmatch(f, p) for p in patterns)))
    before = _tree(storage)
    with hub_errors(repo.repo):
        path = Path(
            snapshot_download(
                repo.repo,
                revision=repo.commit,
                allow_patterns=list(patterns),
                endpoint=endpoint(),
                cache_dir=hf_cache_dir(),
                tqdm_class=_progress_bar(progress, repo.repo),
            )
        )
    created = tuple(sorted(p for p in _tree(storage) - before if not p.is_dir()))
    return Fetched(path, created)


def _tree(storage: Path) -> set[Path]:
    """The snapshot links and blobs of one repo in the HF cache."""
    return {p for sub in ("snapshots", "blobs") for p in (storage / sub).rglob("*")}
