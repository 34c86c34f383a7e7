"""`POST /v1/responses` on a live server, as the official `openai` SDK and Codex use it, from a
scripted engine: wire shapes, the store, tools, and errors in OpenAI's shape. The same paths
on real engines are in test_server_responses_real.py."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from impetus_cli.errors import EngineError
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.manager import ModelManager
from tests.fixtures.fake_engine import FakeEngine, fake_info, fake_model
from tests.fixtures.recorded import load_recorded
from tests.fixtures.servers import Registry, start_server
from tests.test_server_openai import raw_post

FN = {
    "type": "function",
    "name": "read_file",
    "description": "Read a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
}
CALL = '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>'


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-anything", max_retries=0)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """Every SSE block is an ``event:`` line and a ``data:`` line that agree on the type."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        head, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}" and data.startswith("data: ")
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def get(url: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_whole_response_is_kept_and_can_be_read_back_and_deleted(fake_server: str) -> None:
    FakeEngine.enqueue(["Hello", " world"])
    reply = client(fake_server).responses.create(model="fake", input="hi", metadata={"k": "v"})
    assert reply.object == "response" and reply.status == "completed"
    assert reply.output_text == "Hello world" and reply.metadata == {"k": "v"}
    assert reply.usage is not None and reply.usage.output_tokens == 2
    assert reply.usage.total_tokens == reply.usage.input_tokens + 2
    base = f"{fake_server}/v1/responses/{reply.id}"
    status, stored = get(base)
    assert status == 200 and stored["output"][0]["content"][0]["text"] == "Hello world"
    status, listed = get(base + "/input_items")
    assert status == 200 and listed["data"][0]["content"] == "hi"
    assert get(base, "DELETE") == (200, {"id": reply.id, "object": "response", "deleted": True})
    status, missing = get(base)
    assert status == 404 and missing["error"]["code"] == "response_not_found"
    assert set(missing["error"]) == {"message", "type", "param", "code"}


def test_a_stream_is_event_and_data_lines_ending_with_completed(fake_server: str) -> None:
    FakeEngine.enqueue(["Hel", "lo"])
    body = {"model": "fake", "input": "hi", "stream": True, "store": False}
    status, headers, raw = raw_post(fake_server, "/v1/responses", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = events_of(raw)
    assert "[DONE]" not in raw.decode()
    assert [e["type"] for e in events][:2] == ["response.created", "response.in_progress"]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["Hel", "lo"]
    last = events[-1]
    assert last["type"] == "response.completed" and last["response"]["status"] == "completed"
    assert last["response"]["output"][0]["content"][0]["text"] == "Hello"
    assert get(f"{fake_server}/v1/responses/{last['response']['id']}")[0] == 404  # store: false


def test_function_tools_then_the_output_turn_with_the_sdk_stream_helper(fake_server: str) -> None:
    api = client(fake_server)
    FakeEngine.enqueue(["Let me read it.", CALL])
    with api.responses.stream(model="fake", input="read a.py", tools=[FN]) as stream:  # type: ignore[list-item]
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "read_file"
    assert json.loads(call.arguments) == {"path": "a.py"} and call.call_id.startswith("call_")
    assert first.output_text == "Let me read it."
    # Stateless, as Codex: the whole history again, with the call's output.
    history: list[Any] = [
        {"role": "user", "content": "read a.py"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "print(1)"},
    ]
    FakeEngine.enqueue(["It prints 1."])
    second = api.responses.create(model="fake", input=history, tools=[FN], store=False)  # type: ignore[list-item]
    assert second.output_text == "It prints 1."
    # Stateful: only the output, after the stored first response.
    FakeEngine.enqueue(["Still 1."])
    third = api.responses.create(
        model="fake",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "print(1)"}],
        tools=[FN],  # type: ignore[list-item]
    )
    assert third.output_text == "Still 1." and third.previous_response_id == first.id
    assert third.usage is not None and second.usage is not None
    assert third.usage.input_tokens == second.usage.input_tokens  # the same conversation


def test_a_namespaced_call_goes_back_under_its_namespace(fake_server: str) -> None:
    tools = [
        {"type": "namespace", "name": "files", "description": "File tools", "tools": [FN]},
        {"type": "web_search", "external_web_access": True},
    ]
    FakeEngine.enqueue([CALL.replace('"read_file"', '"files__read_file"')])
    body = {"model": "fake", "input": "x", "tools": tools, "stream": True}
    events = events_of(raw_post(fake_server, "/v1/responses", body)[2])
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["name"] == "read_file" and done["item"]["namespace"] == "files"


def test_errors_are_openai_shaped_with_the_right_status(fake_server: str) -> None:
    api = client(fake_server)
    with pytest.raises(openai.NotFoundError) as missing:
        api.responses.create(model="nope", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        api.responses.create(model="fake", input=[])
    assert bad.value.param == "input"
    with pytest.raises(openai.BadRequestError, match="web_search_preview"):
        api.responses.create(
            model="fake",
            input="x",
            tools=[{"type": "web_search_preview"}],
            tool_choice={"type": "web_search_preview"},
        )
    with pytest.raises(openai.BadRequestError) as gone:
        api.responses.create(model="fake", input="x", previous_response_id="resp_unknown")
    assert gone.value.code == "previous_response_not_found"


def test_a_prompt_over_the_context_is_a_400_before_any_event(fake_server: str) -> None:
    body = {"model": "fake", "input": "word " * 5000, "stream": True}
    status, headers, raw = raw_post(fake_server, "/v1/responses", body)
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith("This model's maximum context length is 4096 tokens.")


def test_an_engine_failure_mid_stream_is_response_failed_then_the_server_goes_on(
    fake_server: str,
) -> None:
    FakeEngine.enqueue(["partial", EngineError("the backend crashed")])
    body = {"model": "fake", "input": "x", "stream": True}
    events = events_of(raw_post(fake_server, "/v1/responses", body)[2])
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["message"] == "the backend crashed"
    FakeEngine.enqueue(["fine"])
    assert client(fake_server).responses.create(model="fake", input="x").output_text == "fine"


@pytest.fixture
def roomy_fake_server(tmp_path: Path) -> Iterator[str]:
    """The scripted engine with a context as large as agents need (their prompts are long)."""
    FakeEngine.reset()
    model = fake_model(tmp_path, "gemma3:270m")
    settings = replace(load_settings(), ctx=65536, parallel=1, keep_alive=-1)
    manager = ModelManager(
        settings,
        store=Registry({"gemma3:270m": model.path}),
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: 100_000_000_000,
        allow_paths=False,
    )
    manager.models.info = lambda m: fake_info(m.path, n_ctx=65536)  # type: ignore[method-assign]
    with start_server(manager, settings) as url:
        yield url


@pytest.mark.parametrize("client_name", ["codex", "codex-oss"])
async def test_recorded_codex_turns_get_the_events_codex_reads(
    roomy_fake_server: str, client_name: str
) -> None:
    """Codex's call-then-answer turn, as it sent it: it runs the call it reads from
    ``response.output_item.done`` and ends the turn at ``response.completed``."""
    import aiohttp

    turns = [r for r in load_recorded(client_name) if r.path == "/v1/responses"]
    assert turns and all(r.streams for r in turns)
    async with aiohttp.ClientSession() as session:
        for turn in turns:
            follow_up = any(i.get("type") == "function_call_output" for i in turn.body["input"])
            call = '<tool_call>{"name": "exec_command", "arguments": {"cmd": "ls"}}</tool_call>'
            FakeEngine.enqueue(["done"] if follow_up else [call])
            async with session.request(
                **turn.replay(roomy_fake_server, model="gemma3:270m", api_key="sk-x")
            ) as reply:
                assert reply.status == 200, await reply.text()
                events = events_of(await reply.read())
            assert events[-1]["type"] == "response.completed"
            items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
            if follow_up:
                assert items[0]["type"] == "message"
                assert items[0]["content"][0]["text"] == "done"
            else:
                assert items[0]["type"] == "function_call" and items[0]["name"] == "exec_command"
                assert json.loads(items[0]["arguments"]) == {"cmd": "ls"}


VALID = {
    "model": "fake",
    "input": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "input_text", "text": "hello there"}]},
        {"type": "function_call", "call_id": "c1", "name": "read_file", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "x"},
    ],
    "tools": [FN, {"type": "namespace", "name": "ns", "description": "", "tools": [FN]}],
    "max_output_tokens": 5,
    "store": False,
}
ODD = [None, [], {}, "", -1, 1.7e308, True, [[]], [{}], {"type": []}, {"type": {}}, "x" * 300]


def malformed() -> list[tuple[str, bytes]]:
    """Mutations of a valid request, and every field and item shape given odd values."""
    rng = random.Random(4321)
    valid = json.dumps(VALID).encode()
    cases = []
    for i in range(30):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(32, 127)
        cases.append((f"flipped #{i}", bytes(data)))
        cases.append((f"truncated #{i}", valid[: rng.randrange(1, len(valid) - 1)]))
    keys = [*VALID, "instructions", "tool_choice", "text", "reasoning", "include", "stream",
            "previous_response_id", "metadata", "parallel_tool_calls", "temperature", "top_p",
            "truncation", "background", "conversation", "keep_alive"]  # fmt: skip
    items = [
        lambda v: {"type": v},
        lambda v: {"role": v, "content": "x"},
        lambda v: {"role": "user", "content": v},
        lambda v: {"role": "user", "content": [{"type": "input_image", "image_url": v}]},
        lambda v: {"type": "function_call", "call_id": v, "name": "read_file", "arguments": v},
        lambda v: {"type": "function_call_output", "call_id": "c1", "output": v},
        lambda v: {"type": "reasoning", "content": v, "encrypted_content": v},
        lambda v: {"type": "item_reference", "id": v},
        lambda v: {"type": "custom_tool_call", "call_id": "c", "name": "x", "input": v},
    ]
    tools = [
        lambda v: {"type": v},
        lambda v: {"type": "function", "name": v, "parameters": v},
        lambda v: {"type": "namespace", "name": "ns", "tools": v},
        lambda v: {"type": "namespace", "name": v, "tools": [v]},
        lambda v: {"type": "custom", "name": v},
    ]
    for value in ODD:
        for key in keys:
            cases.append((f"{key}={value!r:.20}", json.dumps({**VALID, key: value}).encode()))
        for i, make in enumerate(items):
            body = {**VALID, "input": [{"role": "user", "content": "x"}, make(value)]}
            cases.append((f"item {i} {value!r:.20}", json.dumps(body).encode()))
        for i, make in enumerate(tools):
            body = {**VALID, "tools": [make(value)], "tool_choice": value}
            cases.append((f"tool {i} {value!r:.20}", json.dumps(body).encode()))
    return cases


def test_malformed_requests_get_openai_errors_never_a_5xx(fake_server: str) -> None:
    failures = []
    for name, body in malformed():
        FakeEngine.scripts.clear()
        status, _, raw = raw_post(fake_server, "/v1/responses", body)
        if status >= 500:
            failures.append(f"{name}: {status} {raw[:300]!r}")
        elif status >= 400:
            error = json.loads(raw).get("error")
            if not (isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)):
                failures.append(f"{name}: {status} not OpenAI's error shape: {raw[:200]!r}")
    assert failures == []
    FakeEngine.enqueue(["still here"])
    assert client(fake_server).responses.create(model="fake", input="x").output_text == "still here"


def test_input_tokens_counts_what_a_create_would_evaluate(fake_server: str) -> None:
    api = client(fake_server)
    ask: dict[str, Any] = {"model": "fake", "input": VALID["input"], "instructions": "Be kind."}
    counted = api.responses.input_tokens.count(**ask)
    assert counted.object == "response.input_tokens" and counted.input_tokens > 0
    reply = api.responses.create(**ask)
    assert reply.usage is not None and reply.usage.input_tokens == counted.input_tokens
    with pytest.raises(openai.NotFoundError):
        api.responses.input_tokens.count(model="nope", input="x")


def test_logprobs_come_with_the_text_when_included(fake_server: str) -> None:
    api = client(fake_server)
    FakeEngine.enqueue(["a", "b"])
    ask: dict[str, Any] = {"model": "fake", "input": "x"}
    reply = api.responses.create(**ask, include=["message.output_text.logprobs"], top_logprobs=2)
    part = reply.output[0].content[0]  # type: ignore[union-attr]
    assert [(p.token, p.logprob) for p in part.logprobs] == [("1", -0.1), ("2", -0.2)]  # type: ignore[union-attr]
    assert [len(p.top_logprobs) for p in part.logprobs] == [2, 2]  # type: ignore[union-attr]
    FakeEngine.enqueue(["a", "b"])
    body = {**ask, "stream": True, "include": ["message.output_text.logprobs"]}
    events = events_of(raw_post(fake_server, "/v1/responses", body)[2])
    deltas = [e["logprobs"] for e in events if e["type"] == "response.output_text.delta"]
    assert [[p["token"] for p in d] for d in deltas] == [["1"], ["2"]]
    FakeEngine.enqueue(["a"])
    plain = api.responses.create(**ask)
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]
