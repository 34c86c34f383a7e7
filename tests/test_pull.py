"""`pull` against a loopback Hub: download, resume, verification, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from impetus_cli.errors import CorruptModel, DownloadError, ModelNotFound
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.download import PullProgress, pull
from impetus_cli.runtime.store import Store
from tests.fixtures.hub import FakeHub, gguf_bytes, mlx_files

REPO = "bartowski/Qwen2.5-Coder-0.5B-Instruct-GGUF"
FILE = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
CUT = 20 * 16 * 1024  # a whole number of the read chunks the hub fixture sets


@pytest.fixture
def gguf_repo(fake_hub: FakeHub, tmp_path: Path) -> bytes:
    data = gguf_bytes(tmp_path)
    fake_hub.add_repo(
        REPO,
        {
            FILE: data,
            "Qwen2.5-Coder-0.5B-Instruct-Q8_0.gguf": data + b"\0" * 10,
            "README.md": b"hi",
        },
    )
    return data


def test_pull_a_catalog_name_downloads_verifies_and_registers(
    fake_hub: FakeHub, gguf_repo: bytes
) -> None:
    seen: list[PullProgress] = []
    model = pull("qwen2.5-coder:0.5b-q4_k_m", load_settings(), seen.append)
    assert model.path.read_bytes() == gguf_repo and model.origin == "impetus"
    assert model.quantization == "Q4_K_M" and model.revision
    assert seen and seen[-1].downloaded == len(gguf_repo)
    assert Store(load_settings()).get("qwen2.5-coder:0.5b-q4_k_m").path == model.path


def test_pull_again_returns_at_once(fake_hub: FakeHub, gguf_repo: bytes) -> None:
    pull("qwen2.5-coder:0.5b-q4_k_m", load_settings())
    before = len(fake_hub.requests)
    pull("qwen2.5-coder:0.5b-q4_k_m", load_settings())
    assert len(fake_hub.requests) == before  # not a single request


def test_a_cut_connection_resumes_with_a_range_request(fake_hub: FakeHub, gguf_repo: bytes) -> None:
    fake_hub.cut_after, fake_hub.cuts_left = CUT, 1
    model = pull("qwen2.5-coder:0.5b-q4_k_m", load_settings())
    assert fake_hub.ranges() == [f"bytes={CUT}-"]
    assert model.path.read_bytes() == gguf_repo


def test_a_failed_pull_continues_where_it_stopped_next_time(
    fake_hub: FakeHub, gguf_repo: bytes
) -> None:
    fake_hub.cut_after, fake_hub.cuts_left = (
        len(gguf_repo) // 3,
        100,
    )  # every attempt dies at the same byte
    with pytest.raises(DownloadError):
        pull("qwen2.5-coder:0.5b-q4_k_m", load_settings())
    assert Store(load_settings()).manifests() == []  # nothing registered
    fake_hub.cuts_left = 0
    fake_hub.requests.clear()
    model = pull("qwen2.5-coder:0.5b-q4_k_m", load_settings())
    assert fake_hub.ranges() and fake_hub.ranges()[0] != "bytes=0-"  # continued, did not restart
    assert model.path.read_bytes() == gguf_repo


def test_a_corrupted_transfer_is_detected_and_not_registered(
    fake_hub: FakeHub, gguf_repo: bytes
) -> None:
    fake_hub.corrupt = True
    with pytest.raises(CorruptModel, match="sha256"):
        pull("qwen2.5-coder:0.5b-q4_k_m", load_settings())
    assert Store(load_settings()).manifests() == []
    fake_hub.corrupt = False
    assert pull("qwen2.5-coder:0.5b-q4_k_m", load_settings()).path.read_bytes() == gguf_repo


def test_hf_repo_without_quant_picks_a_file_that_fits(fake_hub: FakeHub, gguf_repo: bytes) -> None:
    notes: list[str] = []
    model = pull(f"hf:{REPO}", load_settings(), say=notes.append)
    assert model.filename == FILE and "Q4_K_M" in notes[-1]


def test_hf_mlx_repo_pulls_a_directory(fake_hub: FakeHub) -> None:
    fake_hub.add_repo("mlx-community/tiny-4bit", mlx_files())
    model = pull("hf.co/mlx-community/tiny-4bit", load_settings())
    assert model.format == "mlx" and (model.path / "config.json").exists()
    assert not (model.path / "README.md").exists()
    assert json.loads((model.path / "config.json").read_text())["quantization"]["bits"] == 4
    blobs = model.path.parent.parent / "blobs"
    assert {p.resolve() for p in model.path.iterdir()} <= set(model.owned_files)
    Store(load_settings()).remove(model.name)
    assert not model.path.exists() and list(blobs.iterdir()) == []  # all of it was ours


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hf:nobody/nothing", "No repository nobody/nothing"),
        (f"hf:{REPO}:missing.gguf", "has no file missing.gguf"),
        ("qwen2.5-coderr:7b", "not in the catalog"),
    ],
)
def test_missing_repo_or_file_is_a_clear_error(
    fake_hub: FakeHub, gguf_repo: bytes, name: str, message: str
) -> None:
    with pytest.raises(ModelNotFound, match=message):
        pull(name, load_settings())


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DownloadError):
        pull(f"hf:{REPO}", load_settings())
