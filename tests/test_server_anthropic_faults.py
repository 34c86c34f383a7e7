"""`/v1/messages` on the scripted engine, where the model's words are known: the exact event
stream of text, reasoning and tool calls, the ping while a prompt is evaluated, a failure
after the stream began, authentication, and a server that is overloaded."""

from __future__ import annotations

import json
import socket
import struct
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import pytest

from impetus_cli.errors import EngineError
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.manager import ModelManager
from tests.fixtures.fake_engine import FakeEngine, fake_info, fake_model
from tests.fixtures.servers import Registry, start_server
from tests.test_server_anthropic import api, check_blocks, events_of, post

KEY = "sk-right"
TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
    {"name": "list_files", "input_schema": {"type": "object", "properties": {}}},
]
CALLS = [
    "I will look.",
    "<tool_",
    'call>\n{"name": "read_file", "arguments": {"path": "server.py"}}\n</tool_call>',
    '<tool_call>{"name": "list_files", "arguments": {}}</tool_call>',
]
ASK = [{"role": "user", "content": "read server.py"}]


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[str, ModelManager]]:
    """The scripted engine as `qwen3:8b` (a model that reasons between <think> tags) on a
    server that wants an API key."""
    FakeEngine.reset()
    model = fake_model(tmp_path, "qwen3:8b")
    settings = replace(
        load_settings(), ctx=4096, parallel=1, keep_alive=-1, queue_size=2, api_key=KEY
    )
    manager = ModelManager(
        settings,
        store=Registry({"qwen3:8b": model.path}),
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: 100_000_000_000,
        allow_paths=False,
    )
    info = replace(fake_info(model.path), architecture="qwen3")
    manager.models.info = lambda m: info  # type: ignore[method-assign]
    with start_server(manager, settings) as url:
        yield url, manager


def ask(url: str, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    status, _, raw = post(
        url, {"model": "qwen3:8b", "max_tokens": 100, "messages": ASK, **body}, **{"x-api-key": KEY}
    )
    assert status == 200, raw
    return events_of(raw)


def test_text_reasoning_and_calls_stream_as_blocks_in_order(
    scripted: tuple[str, ModelManager],
) -> None:
    FakeEngine.enqueue(["<think>The file", " is small.</think>", *CALLS])
    events = ask(scripted[0], stream=True, tools=TOOLS)
    assert [name for name, _ in events] == [
        "message_start",
        *["content_block_start", "content_block_delta", "content_block_delta"],
        "content_block_stop",
        *["content_block_start", "content_block_delta", "content_block_stop"],
        *["content_block_start", "content_block_delta", "content_block_stop"] * 2,
        "message_delta",
        "message_stop",
    ]
    thinking, text, read, listed = check_blocks(events)
    assert thinking == {"type": "thinking", "thinking": "The file is small.", "signature": "",
                        "partial": ""}  # fmt: skip
    assert text["type"] == "text" and text["text"] == "I will look."
    assert read["type"] == "tool_use" and read["name"] == "read_file" and read["input"] == {}
    assert json.loads(read["partial"]) == {"path": "server.py"}
    assert listed["name"] == "list_files" and json.loads(listed["partial"]) == {}
    assert read["id"] != listed["id"]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 6 and delta["usage"]["input_tokens"] > 0


def test_a_whole_message_has_the_same_blocks(scripted: tuple[str, ModelManager]) -> None:
    FakeEngine.enqueue(["<think>The file is small.</think>", *CALLS])
    reply = api(scripted[0], api_key=KEY).messages.create(
        model="qwen3:8b",
        max_tokens=100,
        messages=ASK,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    kinds = [(b.type, getattr(b, "name", None)) for b in reply.content]
    assert kinds == [
        ("thinking", None), ("text", None), ("tool_use", "read_file"), ("tool_use", "list_files")
    ]  # fmt: skip
    assert reply.content[2].input == {"path": "server.py"}  # type: ignore[union-attr]
    assert reply.content[3].input == {}  # type: ignore[union-attr]
    assert reply.stop_reason == "tool_use"


def test_disable_parallel_tool_use_keeps_the_first_call(scripted: tuple[str, ModelManager]) -> None:
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    FakeEngine.enqueue(CALLS)
    blocks = check_blocks(ask(scripted[0], stream=True, tools=TOOLS, tool_choice=choice))
    assert [b.get("name") for b in blocks] == [None, "read_file"]
    FakeEngine.enqueue(CALLS)
    reply = api(scripted[0], api_key=KEY).messages.create(
        model="qwen3:8b",
        max_tokens=100,
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,  # type: ignore[arg-type]
    )
    assert [b.type for b in reply.content] == ["text", "tool_use"]


def test_without_tools_call_tags_are_text(scripted: tuple[str, ModelManager]) -> None:
    FakeEngine.enqueue([CALLS[3]])
    reply = api(scripted[0], api_key=KEY).messages.create(
        model="qwen3:8b", max_tokens=100, messages=ASK
    )
    assert reply.content[0].text == CALLS[3] and reply.stop_reason == "end_turn"  # type: ignore[union-attr]


def test_pings_keep_the_stream_alive_while_the_prompt_is_evaluated(
    scripted: tuple[str, ModelManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, manager = scripted
    FakeEngine.enqueue(["warm"])
    ask(url, stream=True)  # loads the engine
    monkeypatch.setattr("impetus_cli.server.streaming.HEARTBEAT_S", 0.2)
    manager.loaded()[0].engine.step_delay = 1.5  # type: ignore[attr-defined]
    FakeEngine.enqueue(["late"])
    names = [name for name, _ in ask(url, stream=True)]
    first_block = names.index("content_block_start")
    assert names[0] == "message_start" and "ping" in names[1:first_block]
    assert names[first_block:] == [
        "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop",
    ]  # fmt: skip


@contextmanager
def until_ping(url: str, max_tokens: int, timeout: float) -> Iterator[tuple[socket.socket, bytes]]:
    """A streamed /v1/messages request on a raw socket, read until the first ping; the socket
    stays open inside the block (to be reset, or closed as a client gives up)."""
    body = json.dumps(
        {"model": "qwen3:8b", "max_tokens": max_tokens, "stream": True, "messages": ASK}
    )
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(
            f"POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nx-api-key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        received = b""
        while b"event: ping" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        yield sock, received


def test_a_ping_goes_out_while_the_engine_is_still_silent(
    scripted: tuple[str, ModelManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude Code gives up on a stream that stays silent: the pings must reach it during a
    long prompt evaluation, not only with the first words after it."""
    url, manager = scripted
    FakeEngine.enqueue(["warm"])
    ask(url, stream=True)
    monkeypatch.setattr("impetus_cli.server.streaming.HEARTBEAT_S", 0.2)
    manager.loaded()[0].engine.step_delay = 20.0  # type: ignore[attr-defined]
    FakeEngine.enqueue(["late"])
    # A 10 s read timeout, the engine waits 20 s: the ping must come while it is silent.
    with until_ping(url, 8, timeout=10) as (_sock, received):
        pass
    assert b"event: message_start" in received and b"late" not in received


def test_a_client_hanging_up_while_the_prompt_is_evaluated_is_no_server_error(
    scripted: tuple[str, ModelManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude Code gone (a reset) while pings are being sent: the generation stops, its slot
    goes back, and the next request is answered; no 500 is logged."""
    url, manager = scripted
    metrics_request = urllib.request.Request(url + "/metrics", headers={"x-api-key": KEY})
    FakeEngine.enqueue(["warm"])
    ask(url, stream=True)
    monkeypatch.setattr("impetus_cli.server.streaming.HEARTBEAT_S", 0.2)
    manager.loaded()[0].engine.step_delay = 2.0  # type: ignore[attr-defined]
    FakeEngine.enqueue(["word "] * 5)
    with until_ping(url, 100, timeout=30) as (sock, _received):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
    manager.loaded()[0].engine.step_delay = 0.0  # type: ignore[attr-defined]
    FakeEngine.enqueue(["next"])
    assert check_blocks(ask(url, stream=True))[0]["text"] == "next"
    with urllib.request.urlopen(metrics_request, timeout=30) as reply:
        metrics = reply.read().decode()
    assert 'endpoint="/v1/messages",status="500"' not in metrics


def test_a_failure_after_the_stream_began_is_an_error_event(
    scripted: tuple[str, ModelManager],
) -> None:
    FakeEngine.enqueue(["partial", EngineError("the backend crashed")])
    events = ask(scripted[0], stream=True)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "api_error", "message": "the backend crashed"},
            "request_id": events[-1][1]["request_id"],
        },
    )
    FakeEngine.enqueue(["fine"])  # the server goes on serving
    assert check_blocks(ask(scripted[0], stream=True))[0]["text"] == "fine"


def test_x_api_key_or_a_bearer_token_is_required(scripted: tuple[str, ModelManager]) -> None:
    url = scripted[0]
    for client in (api(url), anthropic.Anthropic(base_url=url, auth_token="nope", max_retries=0)):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            client.messages.create(model="qwen3:8b", max_tokens=8, messages=ASK)
        assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    status, _, raw = post(url, {"model": "qwen3:8b", "max_tokens": 8, "messages": ASK})
    assert status == 401 and json.loads(raw)["error"]["type"] == "authentication_error"
    FakeEngine.enqueue(["by key"])
    FakeEngine.enqueue(["by token"])
    by_key = api(url, api_key=KEY).messages.create(model="qwen3:8b", max_tokens=8, messages=ASK)
    bearer = anthropic.Anthropic(base_url=url, api_key=None, auth_token=KEY, max_retries=0)
    by_token = bearer.messages.create(model="qwen3:8b", max_tokens=8, messages=ASK)
    assert [by_key.content[0].text, by_token.content[0].text] == ["by key", "by token"]  # type: ignore[union-attr]


def test_no_room_for_the_model_is_a_529_overloaded_error(tmp_path: Path) -> None:
    """Anthropic's SDKs and Claude Code retry a 529 after its Retry-After."""
    FakeEngine.reset()
    model = fake_model(tmp_path, "big", size=50_000_000_000)
    settings = replace(load_settings(), ctx=4096, parallel=1, keep_alive=-1)
    manager = ModelManager(
        settings,
        store=Registry({"big": model.path}),
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: 2_000_000_000,
        allow_paths=False,
    )
    manager.models.info = lambda m: fake_info(m.path, file_bytes=50_000_000_000)  # type: ignore[method-assign]
    with start_server(manager, settings) as url:
        status, headers, raw = post(url, {"model": "big", "max_tokens": 8, "messages": ASK})
        with pytest.raises(anthropic.OverloadedError) as caught:
            api(url).messages.create(model="big", max_tokens=8, messages=ASK)
    assert status == 529 and int(headers["Retry-After"]) > 0
    assert json.loads(raw)["error"]["type"] == "overloaded_error"
    assert caught.value.status_code == 529 and not FakeEngine.loads
