"""/api/pull and /api/delete on a server over the real store, pulling from the loopback Hub:
progress streamed as Ollama's NDJSON, a model already here a success at once (codex --oss),
failures as error lines, the API key required when one is set, and removal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from impetus_cli.runtime.config import Settings
from tests.fixtures.hub import FakeHub, gguf_bytes
from tests.fixtures.recorded import load_recorded
from tests.test_server_ollama import HELLO, call, ndjson

pytest.importorskip("llama_cpp")

NAME = "qwen2.5-coder:0.5b-q4_k_m"
KEY = "sk-ollama-test"


def publish(hub: FakeHub, name: str, settings: Settings, data: bytes) -> None:
    """Put the file the catalog picks for ``name`` on this machine into the loopback Hub."""
    from impetus_cli.runtime import catalog
    from impetus_cli.runtime.hardware import detect, memory_budget
    from impetus_cli.runtime.names import parse_ref

    budget = memory_budget(detect(), settings)
    target = catalog.resolve(parse_ref(name), budget, settings.min_ctx)
    hub.add_repo(target.repo, {f: data for f in target.files})


def _serve(api_key: str | None = None) -> Iterator[tuple[str, Settings]]:
    from impetus_cli.runtime.manager import ModelManager
    from tests.fixtures.servers import server_settings, start_server

    settings = server_settings(api_key=api_key)
    manager = ModelManager(settings, allow_paths=False)  # the real store under IMPETUS_HOME
    with start_server(manager, settings) as url:
        yield url, settings


@pytest.fixture
def served(fake_hub: FakeHub, tmp_path: Path) -> Iterator[tuple[str, Settings, bytes]]:
    data = gguf_bytes(tmp_path)
    for url, settings in _serve():
        publish(fake_hub, NAME, settings, data)
        yield url, settings, data


def test_a_pull_streams_progress_then_success_and_the_model_serves(
    served: tuple[str, Settings, bytes],
) -> None:
    url, _, data = served
    client = ollama.Client(host=url, timeout=120)
    events = list(client.pull(NAME, stream=True))
    assert events[0].status == "pulling manifest" and events[-1].status == "success"
    progress = [e for e in events if e.completed is not None]
    assert progress and progress[-1].completed == progress[-1].total == len(data)
    assert all(e.digest for e in progress)
    assert NAME in [m.model for m in client.list().models]
    reply = client.chat(model=NAME, messages=HELLO, options={"num_predict": 2})
    assert reply.done and reply.eval_count == 2


def test_a_model_already_here_is_a_success_at_once(
    served: tuple[str, Settings, bytes], fake_hub: FakeHub
) -> None:
    url, _, _ = served
    client = ollama.Client(host=url, timeout=120)
    client.pull(NAME)
    asked = len(fake_hub.requests)
    assert [e.status for e in client.pull(NAME, stream=True)] == ["success"]
    assert client.pull(NAME).status == "success"
    assert [e.status for e in client.pull("gemma3:270m", stream=True)] == ["success"]  # built in
    assert len(fake_hub.requests) == asked  # not one question to the Hub


def test_a_failed_pull_says_why_in_the_stream_or_with_its_status(
    served: tuple[str, Settings, bytes],
) -> None:
    url, _, _ = served
    client = ollama.Client(host=url, timeout=120)
    with pytest.raises(ollama.ResponseError, match="No repository org/nothing"):
        list(client.pull("hf:org/nothing", stream=True))
    lines = ndjson(call(url, "POST", "/api/pull", {"model": "hf:org/nothing"})[2])
    assert lines[0] == {"status": "pulling manifest"} and list(lines[-1]) == ["error"]
    status, _, raw = call(url, "POST", "/api/pull", {"model": "hf:org/nothing", "stream": False})
    assert status == 404 and "org/nothing" in ndjson(raw + b"\n")[0]["error"]
    status, _, raw = call(url, "POST", "/api/pull", {"model": "/etc/passwd"})
    assert status == 400 and "local path" in ndjson(raw + b"\n")[0]["error"]


def test_delete_removes_a_pulled_model_and_refuses_a_built_in_one(
    served: tuple[str, Settings, bytes],
) -> None:
    url, _, _ = served
    client = ollama.Client(host=url, timeout=120)
    client.pull(NAME)
    client.chat(model=NAME, messages=[])  # loaded: delete unloads it first
    assert NAME in [m.model for m in client.ps().models]
    assert client.delete(NAME).status == "success"
    assert NAME not in [m.model for m in client.list().models]
    assert NAME not in [m.model for m in client.ps().models]
    with pytest.raises(ollama.ResponseError) as again:
        client.delete(NAME)
    assert again.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as builtin:
        client.delete("gemma3:270m")
    assert builtin.value.status_code == 400 and "never deletes" in builtin.value.error


def test_pull_and_delete_need_the_api_key_when_one_is_set(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    for url, settings in _serve(api_key=KEY):
        publish(fake_hub, NAME, settings, gguf_bytes(tmp_path))
        for method, path in (("POST", "/api/pull"), ("DELETE", "/api/delete")):
            status, _, raw = call(url, method, path, {"model": NAME})
            assert status == 401 and list(ndjson(raw + b"\n")[0]) == ["error"]
        assert fake_hub.requests == []
        keyed = ollama.Client(host=url, timeout=120, headers={"Authorization": f"Bearer {KEY}"})
        assert keyed.pull(NAME).status == "success"


def test_codex_oss_probes_and_pull_replayed(fake_hub: FakeHub, tmp_path: Path) -> None:
    """codex --oss (recorded): /v1/models, /api/version, /api/tags, then a streamed pull of
    the model it was given when the list lacks it; it reads every line as JSON."""
    import json
    import urllib.request

    for url, settings in _serve():
        recorded = [r for r in load_recorded("codex-oss") if not r.is_generation]
        pulled = [r.body["model"] for r in recorded if r.path == "/api/pull"]
        for name in pulled:
            publish(fake_hub, name, settings, gguf_bytes(tmp_path))
        for r in recorded:
            kw = r.replay(url)
            req = urllib.request.Request(
                kw["url"], data=kw.get("data"), method=kw["method"], headers=kw["headers"]
            )
            with urllib.request.urlopen(req, timeout=120) as reply:
                assert reply.status == 200, r.name
                raw = reply.read()
            if r.path == "/api/pull":
                assert ndjson(raw)[-1] == {"status": "success"}
            elif r.path == "/api/version":
                version = json.loads(raw)["version"]
                assert tuple(map(int, version.split("."))) >= (0, 13, 4)
            else:
                assert isinstance(json.loads(raw), dict)
        tags = json.loads(call(url, "GET", "/api/tags")[2])
        assert set(pulled) <= {m["name"] for m in tags["models"]}
