"""The store under faults: files that are not ours, broken links, a home we cannot write."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from impetus_cli.runtime import fs
from impetus_cli.runtime.config import Settings, load_settings
from impetus_cli.runtime.store import Store, manifest_file
from impetus_cli.runtime.types import LocalModel
from impetus_cli.services.doctor import Probes, check_files
from tests.fixtures.cli import run_cli


def _broken_files(settings: Settings, hf_cache: Path, tiny_gguf: Path) -> list[Path]:
    """One readable model and a bad file in each other tool's directory; returns the bad ones."""
    snap = hf_cache / "models--org--repo" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    shutil.copy(tiny_gguf, snap / "repo-Q8_0.gguf")
    dangling = snap / "repo-Q4_K_M.gguf"
    dangling.symlink_to("../../blobs/deleted-by-hf-cache-delete")
    lms = settings.lmstudio_models / "pub" / "Model-GGUF"
    lms.mkdir(parents=True)
    loop = lms / "Model-Q4_K_M.gguf"
    loop.symlink_to(loop.name)  # a link to itself: ELOOP on every read
    blob = settings.ollama_models / "blobs" / "sha256-abc"
    blob.parent.mkdir(parents=True)
    blob.symlink_to("/nonexistent/ollama/blob")
    manifest = settings.ollama_models / "manifests" / "registry.ollama.ai" / "library" / "m" / "7b"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:abc"}
    manifest.write_text(json.dumps({"layers": [layer]}))
    return [dangling, loop, blob]


def test_unreadable_files_are_skipped_listed_by_doctor_and_never_break_list(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    settings = load_settings()
    bad = _broken_files(settings, tmp_path / "hf-cache", tiny_gguf)
    result = run_cli("list", "--json")
    assert result.returncode == 0, result.stderr
    names = [m["name"] for m in json.loads(result.stdout)]
    assert "hf.co/org/repo:Q8_0" in names
    assert not any(n.startswith(("ollama/", "lmstudio/")) or n.endswith("Q4_K_M") for n in names)
    table = run_cli("list")
    assert table.returncode == 0 and "3 model file(s) could not be read" in table.stderr
    (check,) = check_files(Probes(settings))
    assert check.status == "warn" and "3 model file(s) skipped" in check.detail
    for path in bad:
        assert str(path) in check.detail
    assert "broken link" in check.detail and "does not exist" in check.detail


def test_a_healthy_store_has_nothing_to_report(tiny_gguf: Path, tmp_path: Path) -> None:
    snap = tmp_path / "hf-cache" / "models--org--repo" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    shutil.copy(tiny_gguf, snap / "repo-Q8_0.gguf")
    (check,) = check_files(Probes(load_settings()))
    assert check.status == "ok"


def test_a_manifest_whose_file_is_gone_is_skipped_yet_removable(tmp_path: Path) -> None:
    settings = load_settings()
    store = Store(settings)
    gone = tmp_path / "gone.gguf"
    store.add(LocalModel(name="gone:1b", format="gguf", path=gone, origin="impetus", size_bytes=1))
    assert "gone:1b" not in [m.name for m in store.list()]
    (skipped,) = store.skipped()
    assert skipped.path == gone and "impetus rm gone:1b" in skipped.reason
    assert store.remove("gone:1b") == [] and not manifest_file(settings, "gone:1b").exists()


def _our_model(tmp_path: Path, name: str = "ours:1b") -> tuple[Store, Path]:
    weights = tmp_path / "ours.gguf"
    weights.write_bytes(b"GGUF")
    store = Store(load_settings())
    store.add(LocalModel(name=name, format="gguf", path=weights, origin="impetus", size_bytes=4))
    return store, manifest_file(store.settings, name)


def _last_used(manifest: Path) -> float | None:
    return json.loads(manifest.read_text())["last_used"]


def test_last_used_is_written_once_a_minute_at_most_and_the_rest_at_flush(tmp_path: Path) -> None:
    store, manifest = _our_model(tmp_path)
    store.touch("ours:1b")
    first = _last_used(manifest)
    assert first is not None
    time.sleep(0.01)  # a later clock reading, so the held-back time differs from the first
    for _ in range(50):  # a busy server: one request after another
        store.touch("ours:1b")
    assert _last_used(manifest) == first  # coalesced, not rewritten 50 times
    store.flush()
    later = _last_used(manifest)
    assert later is not None and later > first
    assert Store(load_settings()).get("ours:1b").last_used == later


def test_a_full_disk_costs_bookkeeping_a_warning_never_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, manifest = _our_model(tmp_path)
    before = manifest.read_bytes()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs, "atomic_write_json", disk_full)
    with caplog.at_level(logging.WARNING, logger="impetus.store"):
        store.touch("ours:1b")
        store.touch("ours:1b")
        store.flush()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()
    assert manifest.read_bytes() == before


def test_touch_never_brings_back_a_removed_manifest(tmp_path: Path) -> None:
    store, manifest = _our_model(tmp_path)
    store.remove("ours:1b")
    store.touch("ours:1b")
    store.flush()
    assert not manifest.exists()


def test_state_files_refuse_nan_and_write_through_symlinks_keeping_mode(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "state.json"
    real.parent.mkdir()
    real.write_text("{}")
    real.chmod(0o640)
    link = tmp_path / "state.json"
    link.symlink_to(real)
    fs.atomic_write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    assert real.stat().st_mode & 0o777 == 0o640
    with pytest.raises(ValueError):
        fs.atomic_write_json(link, {"keep_alive": float("nan")})
    assert json.loads(real.read_text()) == {"a": 1}
    assert sorted(p.name for p in real.parent.iterdir()) == ["state.json"]  # no temp file left


def test_log_files_are_private_even_when_they_existed(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "serve.log"
    with fs.open_private_log(log) as out:
        out.write(b"one\n")
    assert log.stat().st_mode & 0o777 == 0o600
    log.chmod(0o644)
    with fs.open_private_log(log) as out:
        out.write(b"two\n")
    assert log.stat().st_mode & 0o777 == 0o600 and log.read_bytes() == b"one\ntwo\n"


def test_listing_is_walked_once_and_sees_changes(tmp_path: Path, tiny_gguf: Path) -> None:
    settings = load_settings()
    snap = tmp_path / "hf-cache" / "models--org--repo" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    shutil.copy(tiny_gguf, snap / "repo-Q8_0.gguf")
    first = Store(settings).listing()
    assert Store(settings).listing() is first  # another Store of the process: the same walk
    _our_model(tmp_path, "fresh:1b")  # a pull or import in this process
    assert "fresh:1b" in [m.name for m in Store(settings).list()]
    # another process's pull: a manifest appears (the directory's mtime changes)
    other = manifest_file(settings, "other:1b")
    other.write_text(
        json.dumps(
            {"name": "other:1b", "format": "gguf", "path": str(tiny_gguf), "origin": "impetus"}
            | {"size_bytes": 1}
        )
    )
    os.utime(settings.manifests_dir, ns=(0, time.time_ns() + 10**9))
    assert "other:1b" in [m.name for m in Store(settings).list()]


def test_a_broken_link_never_breaks_the_server(tmp_path: Path, tiny_gguf: Path) -> None:
    pytest.importorskip("llama_cpp")
    from openai import OpenAI

    from impetus_cli.runtime.importer import import_model
    from impetus_cli.runtime.manager import ModelManager
    from tests.fixtures.servers import server_settings, start_server

    _broken_files(load_settings(), tmp_path / "hf-cache", tiny_gguf)
    import_model(str(tiny_gguf), load_settings(), name="tiny")
    settings = server_settings()
    manager = ModelManager(settings, allow_paths=False)
    try:
        with start_server(manager, settings) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            ids = [m.id for m in client.models.list().data]
            assert "tiny" in ids and "hf.co/org/repo:Q8_0" in ids
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        manager.close()


def test_a_pull_that_cannot_write_its_manifest_says_so_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from impetus_cli.errors import ImpetusError

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs, "atomic_write_json", disk_full)
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF")
    model = LocalModel(name="w:1b", format="gguf", path=weights, origin="impetus", size_bytes=4)
    with pytest.raises(ImpetusError, match=r"Cannot record w:1b.*No space left"):
        Store(load_settings()).add(model)
