"""`pull` and `rm` among other tools and other pulls: what is ours, locks, split models."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.discovery import hf_cache_dir
from impetus_cli.runtime.download import pull
from impetus_cli.runtime.store import Store, manifest_file
from tests.fixtures.cli import run_cli, start_cli
from tests.fixtures.hub import COMMIT, FakeHub, gguf_bytes
from tests.fixtures.tiny_models import write_tiny_gguf

REPO = "bartowski/Qwen2.5-Coder-0.5B-Instruct-GGUF"
FILE = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
NAME = "qwen2.5-coder:0.5b-q4_k_m"


@pytest.fixture
def gguf_repo(fake_hub: FakeHub, tmp_path: Path) -> bytes:
    data = gguf_bytes(tmp_path)
    fake_hub.add_repo(REPO, {FILE: data, "README.md": b"hi"})
    return data


def storage() -> Path:
    return hf_cache_dir() / f"models--{REPO.replace('/', '--')}"


def blobs() -> list[Path]:
    return sorted((storage() / "blobs").iterdir())


def test_rm_deletes_the_link_and_blob_its_pull_downloaded(fake_hub: FakeHub, gguf_repo: bytes):
    model = pull(NAME, load_settings())
    blob = Path(os.path.realpath(model.path))
    assert set(model.owned_files) == {model.path, blob}
    result = run_cli("rm", NAME, "-y")
    assert result.returncode == 0 and "2 file(s) deleted" in result.stdout
    assert not blob.exists() and not model.path.is_symlink()
    assert not (storage() / "snapshots" / COMMIT).exists()  # no empty revision left behind


def test_a_file_already_in_the_cache_is_not_ours_to_delete(fake_hub: FakeHub, gguf_repo: bytes):
    from huggingface_hub import hf_hub_download

    # e.g. `hf download`, before Impetus ever pulled this model
    theirs = Path(hf_hub_download(REPO, FILE, cache_dir=hf_cache_dir(), endpoint=fake_hub.url))
    requests = len(fake_hub.requests)
    model = pull(NAME, load_settings())
    assert model.path == theirs and model.owned_files == ()
    assert fake_hub.gets(FILE) == 1  # the pull downloaded nothing
    assert len(fake_hub.requests) > requests  # (it did ask the Hub which file to take)
    assert run_cli("rm", NAME, "-y").returncode == 0
    assert theirs.read_bytes() == gguf_repo  # the `hf` CLI's copy still works


def test_rm_keeps_a_blob_another_snapshot_still_links_to(fake_hub: FakeHub, gguf_repo: bytes):
    model = pull(NAME, load_settings())
    blob = Path(os.path.realpath(model.path))
    newer = storage() / "snapshots" / ("f" * 40) / FILE  # a later revision, same bytes
    newer.parent.mkdir(parents=True)
    newer.symlink_to(os.path.relpath(blob, newer.parent))
    assert run_cli("rm", NAME, "-y").returncode == 0
    assert not model.path.is_symlink()  # our link went
    assert newer.read_bytes() == gguf_repo  # theirs still resolves


def test_a_manifest_from_before_ownership_records_loses_only_unshared_blobs(
    fake_hub: FakeHub, gguf_repo: bytes
) -> None:
    settings = load_settings()
    model = pull(NAME, settings)
    file = manifest_file(settings, NAME)
    data = json.loads(file.read_text())
    data.pop("manifest_version")
    data["owned_files"] = [str(model.path)]  # what version 1 recorded: the link only
    file.write_text(json.dumps(data))
    blob = Path(os.path.realpath(model.path))
    assert Store(settings).remove(NAME) == [model.path, blob]


def test_two_pulls_of_one_file_at_once_download_it_once(fake_hub: FakeHub, gguf_repo: bytes):
    fake_hub.hold = threading.Event()
    first = start_cli("pull", f"hf:{REPO}:q4_k_m")
    try:
        _wait_for(lambda: fake_hub.gets(FILE) == 1, first)  # the first is downloading
        second = start_cli("pull", f"hf.co/{REPO}:Q4_K_M")
        assert second.stderr is not None
        waiting = _read_until(second, "Waiting for another download")
        assert "Waiting for another download" in waiting, waiting
    finally:
        fake_hub.hold.set()
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outputs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "ready" in out
    assert fake_hub.gets(FILE) == 1
    (model,) = Store(load_settings()).manifests()
    assert model.path.read_bytes() == gguf_repo
    assert not list((storage() / "blobs").glob("*.incomplete"))
    assert Path(os.path.realpath(model.path)) in model.owned_files  # the downloader's record kept


def _wait_for(condition, proc) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the pull never got that far"
        time.sleep(0.05)


def _read_until(proc, text: str) -> str:  # type: ignore[no-untyped-def]
    seen = ""
    while text not in seen:
        line = proc.stderr.readline()
        if not line:
            break  # the process ended without saying it
        seen += line
    return seen


@pytest.fixture
def split_repo(fake_hub: FakeHub, tmp_path: Path) -> dict[str, bytes]:
    (tmp_path / "split").mkdir()
    write_tiny_gguf(tmp_path / "split" / "Tiny-Q8_0.gguf", split_max_tensors=8)
    parts = {p.name: p.read_bytes() for p in sorted((tmp_path / "split").iterdir())}
    assert len(parts) == 3
    whole = {"Tiny-F32.gguf": gguf_bytes(tmp_path)}  # another quantization, in one file
    fake_hub.add_repo("testorg/tiny-split-GGUF", {**parts, **whole})
    return parts


def test_a_split_gguf_pulls_every_part_verified_and_lists_as_one_model(
    fake_hub: FakeHub, split_repo: dict[str, bytes]
) -> None:
    fake_hub.cut_after, fake_hub.cuts_left = 2 * 16 * 1024, 1  # the first part breaks once
    model = pull("hf:testorg/tiny-split-GGUF:q8_0", load_settings())
    assert model.path.name == "Tiny-Q8_0-00001-of-00003.gguf" and model.quantization == "Q8_0"
    assert model.size_bytes == sum(len(b) for b in split_repo.values())
    for name, data in split_repo.items():
        assert (model.path.parent / name).read_bytes() == data
    assert fake_hub.ranges() == ["bytes=32768-"]  # resumed, not restarted
    listed = [m for m in Store(load_settings()).list() if m.repo == "testorg/tiny-split-GGUF"]
    assert [m.name for m in listed] == [model.name]  # the parts are one model, not three
    assert len(Store(load_settings()).remove(model.name)) == 6  # three links, three blobs


def test_a_split_gguf_loads_and_answers_as_one_model(
    fake_hub: FakeHub, split_repo: dict[str, bytes]
) -> None:
    pytest.importorskip("llama_cpp")
    pull("hf:testorg/tiny-split-GGUF:Q8_0", load_settings())
    result = run_cli(
        "chat",
        "hf:testorg/tiny-split-GGUF:q8_0",
        "--max-tokens",
        "4",
        "--ctx",
        "512",
        input="hello",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip()


def test_a_pull_killed_mid_transfer_resumes_to_identical_bytes(fake_hub: FakeHub, tmp_path: Path):
    # Bigger than huggingface_hub's 10 MiB read chunk, so the killed process had written a part.
    data = gguf_bytes(tmp_path) + os.urandom(12 * 2**20)
    fake_hub.add_repo(REPO, {FILE: data})
    fake_hub.hold, fake_hub.stall_after = threading.Event(), 11 * 2**20
    proc = start_cli("pull", NAME)
    try:
        _wait_for(lambda: _incomplete_bytes() >= 10 * 2**20, proc)
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait(60)
    finally:
        fake_hub.hold.set()
    kept = _incomplete_bytes()
    fake_hub.stall_after, fake_hub.hold = None, None
    fake_hub.requests.clear()
    model = pull(NAME, load_settings())
    assert fake_hub.ranges() == [f"bytes={kept}-"]  # continued where the killed one stopped
    assert model.path.read_bytes() == data


def _incomplete_bytes() -> int:
    parts = list((storage() / "blobs").glob("*.incomplete")) if storage().exists() else []
    return parts[0].stat().st_size if parts else 0
