"""What Cline's and Continue's Ollama providers sent (tests/data/clients), replayed against the
real server: on a tiny GGUF trained for long prompts (Cline's first request is ~20 KB of
system prompt and tools, and asks for num_ctx 32768), and on Gemma 3 270M. Every request
must get a whole, well-formed answer in the dialect it was sent in."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.recorded import RecordedRequest, load_recorded
from tests.test_server_ollama import ndjson

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Iterator[str]:
    """`tiny-long` (the tiny GGUF with a 64k trained context) and Gemma, both at 32k."""
    from impetus_cli.runtime.manager import ModelManager
    from tests.fixtures.servers import Registry, server_settings, start_server
    from tests.fixtures.tiny_models import write_tiny_gguf

    tiny = write_tiny_gguf(tmp_path_factory.mktemp("long") / "tiny.gguf", context_length=65536)
    settings = replace(server_settings(), ctx=32768)
    store = Registry({"tiny-long": tiny, "gemma3:270m": gemma_gguf})
    manager = ModelManager(settings, store=store, allow_paths=False)
    with start_server(manager, settings) as url:
        yield url


def replay(url: str, recorded: RecordedRequest, model: str) -> tuple[int, str, bytes]:
    kw = recorded.replay(url, model=model, api_key="sk-anything")
    if isinstance(recorded.body, dict) and isinstance(recorded.body.get("options"), dict):
        body = json.loads(kw["data"])  # a reply of a few tokens: the prompt is what is tested
        body["options"]["num_predict"] = 8
        kw["data"] = json.dumps(body).encode()
    elif isinstance(recorded.body, dict):
        body = json.loads(kw["data"])
        body["max_tokens"] = 8
        kw["data"] = json.dumps(body).encode()
    req = urllib.request.Request(
        kw["url"], data=kw.get("data"), method=kw["method"], headers=kw["headers"]
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def check_ollama_chat(raw: bytes) -> dict[str, Any]:
    lines = ndjson(raw)
    *pieces, last = lines
    assert all(p["done"] is False and p["message"]["role"] == "assistant" for p in pieces)
    for p in pieces:
        for c in p["message"].get("tool_calls", []):
            assert isinstance(c["function"]["name"], str)
            assert isinstance(c["function"]["arguments"], dict)
    assert last["done"] is True and last["done_reason"] in ("stop", "length")
    return last


def check_openai_stream(raw: bytes) -> None:
    events = [b for b in raw.decode().split("\n\n") if b]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert any(c.get("usage") for c in chunks)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~8k prompt tokens twice on two shared cores: minutes when busy
@pytest.mark.parametrize("model", ["tiny-long", "gemma3:270m"])
def test_clines_ollama_provider_gets_whole_answers(long_server: str, model: str) -> None:
    prompts = []
    for recorded in load_recorded("cline-ollama"):
        status, kind, raw = replay(long_server, recorded, model)
        assert status == 200, (recorded.name, raw[:300])
        if recorded.path == "/api/tags":
            assert model in [m["name"] for m in json.loads(raw)["models"]]
            continue
        assert kind.startswith("application/x-ndjson")
        prompts.append(check_ollama_chat(raw)["prompt_eval_count"])
    assert len(prompts) == 2 and prompts[1] > prompts[0] > 1000  # the follow-up adds its turn


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", ["tiny-long", "gemma3:270m"])
def test_continues_ollama_provider_gets_whole_answers(long_server: str, model: str) -> None:
    """`cn`'s ollama provider speaks OpenAI chat at apiBase + /v1 (see the recordings' README)."""
    for recorded in load_recorded("continue-ollama"):
        status, kind, raw = replay(long_server, recorded, model)
        assert status == 200 and kind.startswith("text/event-stream"), raw[:300]
        check_openai_stream(raw)
