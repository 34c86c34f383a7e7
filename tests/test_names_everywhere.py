"""Every spelling `pull` accepts names the same model in every verb and over HTTP."""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from impetus_cli.runtime import fs
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.download import pull
from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.names import parse_ref, refers_to
from impetus_cli.runtime.store import Store, find
from impetus_cli.runtime.types import LocalModel
from tests.fixtures.cli import run_cli
from tests.fixtures.hub import FakeHub, gguf_bytes
from tests.fixtures.servers import server_settings, start_server

REPO = "testorg/tiny-llama-GGUF"
CANONICAL = f"hf.co/{REPO}:Q8_0"
SPELLINGS = (
    f"hf:{REPO}:q8_0",
    f"hf:{REPO}:Q8_0",
    f"hf.co/{REPO}:q8_0",
    CANONICAL,
    f"huggingface.co/{REPO}:q8_0",
    f"HF.CO/{REPO.upper()}:q8_0",
)


@pytest.fixture
def tiny_repo(fake_hub: FakeHub, tmp_path: Path) -> bytes:
    data = gguf_bytes(tmp_path)
    fake_hub.add_repo(REPO, {"tiny-llama-Q8_0.gguf": data, "tiny-llama-F32.gguf": data + b"\0"})
    return data


def _model(name: str, quant: str | None, repo: str | None = None) -> LocalModel:
    return LocalModel(
        name=name,
        format="gguf",
        path=Path(f"/m/{name}.gguf"),
        origin="impetus",
        size_bytes=1,
        quantization=quant,
        repo=repo,
    )


def test_spellings_resolve_by_repo_and_quantization_not_by_text() -> None:
    models = [
        _model(CANONICAL, "Q8_0", REPO),
        _model(f"hf.co/{REPO}:F32", "F32", REPO),
        _model("qwen2.5-coder:7b", "Q4_K_M", "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF"),
        _model("qwen2.5-coder:1.5b-q8_0", "Q8_0"),
    ]
    for spelling in SPELLINGS:
        assert refers_to(parse_ref(spelling), models[0]), spelling
        assert find(spelling, models) is models[0], spelling
    assert find(f"hf:{REPO}", models) is None  # two quantizations: ambiguous, not a guess
    assert find("qwen2.5-coder:7b-Q4_K_M", models) is models[2]  # the quantization it got
    assert find("qwen2.5-coder:q4_k_m-7b", models) is models[2]  # tag parts in any order
    assert find("hf:bartowski/Qwen2.5-Coder-7B-Instruct-GGUF:q4_k_m", models) is models[2]
    assert find("QWEN2.5-CODER:1.5B-Q8_0", models) is models[3]
    assert find("qwen2.5-coder:7b-q8_0", models) is None


def test_after_pull_every_verb_finds_the_model_by_any_spelling(
    fake_hub: FakeHub, tiny_repo: bytes
) -> None:
    result = run_cli("pull", f"hf:{REPO}:q8_0")
    assert result.returncode == 0, result.stderr
    assert CANONICAL in result.stdout
    before = len(fake_hub.requests)
    again = run_cli("pull", f"hf.co/{REPO}:Q8_0")
    assert again.returncode == 0 and "already here" in again.stderr
    assert len(fake_hub.requests) == before  # found locally: not a single request
    for spelling in (f"hf:{REPO}:q8_0", f"huggingface.co/{REPO}:Q8_0", f"HF.CO/{REPO}:q8_0"):
        shown = run_cli("show", spelling, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["plan"]["model"] == CANONICAL
    chat = run_cli("chat", f"hf:{REPO}:q8_0", "--max-tokens", "4", "--ctx", "512", input="hi")
    assert chat.returncode == 0 and "Traceback" not in chat.stderr, chat.stderr
    removed = run_cli("rm", f"hf:{REPO}:q8_0", "-y")
    assert removed.returncode == 0 and f"Removed {CANONICAL}" in removed.stdout
    assert Store(load_settings()).manifests() == []


@pytest.fixture
def pulled_server(fake_hub: FakeHub, tiny_repo: bytes) -> Iterator[str]:
    """A server over the real store, holding a model pulled as hf:...:q8_0."""
    pytest.importorskip("llama_cpp")
    pull(f"hf:{REPO}:q8_0", load_settings())
    settings = server_settings()
    manager = ModelManager(settings, allow_paths=False)
    try:
        with start_server(manager, settings) as url:
            yield url
    finally:
        manager.close()


def test_the_server_model_field_takes_any_spelling(pulled_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{pulled_server}/v1", api_key="x", max_retries=0)
    assert CANONICAL in [m.id for m in client.models.list().data]
    for spelling in (f"hf:{REPO}:q8_0", f"hf.co/{REPO}:q8_0", CANONICAL):
        reply = client.chat.completions.create(
            model=spelling, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_full_home_never_cuts_a_stream(
    pulled_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import urllib.request

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs, "atomic_write_json", disk_full)
    body = {
        "model": f"hf:{REPO}:q8_0",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    request = urllib.request.Request(
        f"{pulled_server}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with caplog.at_level(logging.WARNING, logger="impetus.store"):
        with urllib.request.urlopen(request, timeout=120) as reply:
            lines = reply.read().decode().splitlines()
        assert [line for line in lines if line][-1] == "data: [DONE]"
        deadline = time.monotonic() + 60  # the bookkeeping runs as the request is released
        while not any("No space left" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no warning about the failed bookkeeping"
            time.sleep(0.05)
