"""The recordings of real coding agents (tests/data/clients) are complete, usable and safe.

They are the ground truth the dialect adapters replay, so each must parse, carry what was on
the wire, hold no credential, and include the turn that matters most: the follow-up that
carries a tool's result.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.recorded import (
    CLIENTS_DIR,
    REDACTED,
    SECRET_HEADERS,
    load_recorded,
    recorded_clients,
)

CLIENTS = recorded_clients()
FILES = sorted(CLIENTS_DIR.glob("*/*.json"))
NAME = re.compile(r"^(\d{2,})-(GET|HEAD|POST|PUT|DELETE|OPTIONS)-([A-Za-z0-9_.-]+)\.json$")
KEY_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{16,}"),
    re.compile(r"capture-dummy"),  # the key the capture runs used must be scrubbed too
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
]


def test_every_expected_client_was_recorded() -> None:
    expected = {"claude-code", "codex", "codex-oss", "continue-openai", "cline-openai"}
    assert expected <= set(CLIENTS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recording_parses_with_method_path_headers_body(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert set(raw) == {"method", "path", "query", "headers", "body", "answered"}
    match = NAME.match(path.name)
    assert match, path.name
    assert raw["method"] == match.group(2)
    assert raw["path"].startswith("/")
    assert isinstance(raw["query"], dict)
    assert isinstance(raw["headers"], dict) and raw["headers"]
    assert all(isinstance(v, str) for v in raw["headers"].values())
    assert isinstance(raw["answered"].get("status"), int)
    if raw["method"] == "POST" and raw["path"] != "/api/pull":
        assert isinstance(raw["body"], dict) and raw["body"], "a POST's JSON body was not kept"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recording_holds_no_secret(path: Path) -> None:
    text = path.read_text()
    for pattern in KEY_PATTERNS:
        assert not pattern.search(text), f"{pattern.pattern} found in {path.name}"
    for name, value in json.loads(text)["headers"].items():
        if name.lower() in SECRET_HEADERS:
            assert value in (REDACTED, f"Bearer {REDACTED}", f"Basic {REDACTED}"), name


@pytest.mark.parametrize("client", CLIENTS)
def test_recordings_are_numbered_in_order(client: str) -> None:
    numbers = [int(p.name.split("-", 1)[0]) for p in sorted((CLIENTS_DIR / client).glob("*.json"))]
    assert numbers == list(range(1, len(numbers) + 1))


def _carries_tool_result(body: Any) -> bool:
    items = list(body.get("messages") or []) + list(body.get("input") or [])
    for item in items:
        if item.get("role") == "tool" or item.get("type") == "function_call_output":
            return True
        content = item.get("content")
        if isinstance(content, list) and any(p.get("type") == "tool_result" for p in content):
            return True
    return False


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_sent_a_follow_up_with_a_tool_result(client: str) -> None:
    generations = [r for r in load_recorded(client) if r.is_generation]
    assert generations, "no model request recorded"
    first, last = generations[0], generations[-1]
    assert first.answered["tool_call"], "the first turn was not answered with a tool call"
    assert not _carries_tool_result(first.body)
    assert _carries_tool_result(last.body)


def test_load_recorded_keeps_order_and_wire_details() -> None:
    requests = load_recorded("claude-code")
    assert [(r.method, r.path) for r in requests][:2] == [("HEAD", "/"), ("POST", "/v1/messages")]
    message = requests[1]
    assert message.target == "/v1/messages?beta=true"
    assert message.streams and message.is_generation
    assert message.header("X-API-KEY") == REDACTED
    assert message.header("anthropic-version") == "2023-06-01"


def test_replay_swaps_model_and_key_and_leaves_transport_headers() -> None:
    message = next(r for r in load_recorded("codex") if r.is_generation)
    kwargs = message.replay("http://127.0.0.1:9/", model="tiny", api_key="k1")
    assert kwargs["method"] == "POST"
    assert kwargs["url"] == "http://127.0.0.1:9/v1/responses"
    assert kwargs["headers"]["Authorization"] == "Bearer k1"
    assert not {"host", "content-length"} & {k.lower() for k in kwargs["headers"]}
    assert json.loads(kwargs["data"])["model"] == "tiny"
    assert message.body["model"] == "gemma3:270m", "the recording itself must stay untouched"
    anonymous = message.replay("http://127.0.0.1:9")
    assert "Authorization" not in anonymous["headers"]


def test_load_recorded_names_the_known_clients_for_an_unknown_one() -> None:
    with pytest.raises(FileNotFoundError, match="claude-code"):
        load_recorded("no-such-client")


def test_the_readme_describes_every_recorded_client() -> None:
    readme = (CLIENTS_DIR / "README.md").read_text()
    for client in CLIENTS:
        assert f"`{client}`" in readme, client


# --- the capture server that made them -----------------------------------------------------

SECRET = "sk-test-capture-secret-0123456789"


@pytest.fixture
async def capture_url(tmp_path: Path) -> AsyncIterator[str]:
    from aiohttp.test_utils import TestServer

    from scripts.capture_server import Options, make_app

    options = Options(out=tmp_path / "captures", models=("tiny",), tool_call=True)
    server = TestServer(make_app(options), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_capture_server_answers_a_responses_stream_with_a_tool_call_and_redacts(
    capture_url: str, tmp_path: Path
) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=capture_url + "/v1", api_key=SECRET, max_retries=0)
    schema = {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}
    tool = {"type": "function", "name": "exec_command", "parameters": schema}
    async with client.responses.stream(model="tiny", input="list", tools=[tool]) as stream:
        final = await stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and call.name == "exec_command"
    assert json.loads(call.arguments) == {"cmd": "ls -a"}
    recorded = tmp_path / "captures" / "01-POST-v1-responses.json"
    text = recorded.read_text()
    assert SECRET not in text
    assert json.loads(text)["headers"]["Authorization"] == f"Bearer {REDACTED}"


async def test_capture_server_streams_anthropic_events_in_order_and_answers_text_after_a_result(
    capture_url: str,
) -> None:
    import aiohttp

    tool = {"name": "Bash", "input_schema": {"type": "object", "properties": {}}}
    history = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
        },
    ]
    body = {"model": "tiny", "max_tokens": 5, "stream": True, "tools": [tool], "messages": history}
    async with (
        aiohttp.ClientSession() as session,
        session.post(capture_url + "/v1/messages?beta=true", json=body) as response,
    ):
        text = await response.text()
    events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert '"text_delta"' in text and '"stop_reason": "end_turn"' in text


async def test_capture_server_streams_ollama_chat_as_ndjson(capture_url: str) -> None:
    import aiohttp

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(capture_url + "/api/chat", json=body) as response:
            lines = [json.loads(line) for line in (await response.text()).splitlines()]
        async with session.get(capture_url + "/api/tags") as response:
            tags = await response.json()
    assert [line["done"] for line in lines] == [False, True]
    assert lines[0]["message"]["content"] and lines[-1]["done_reason"] == "stop"
    assert [m["name"] for m in tags["models"]] == ["tiny"]
