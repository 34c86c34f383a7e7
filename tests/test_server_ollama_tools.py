"""Tool calls, thinking, JSON output and mid-stream failures on Ollama's /api/chat and
/api/generate: the wire shapes from a scripted engine, and forced tool choices and formats on
the tiny GGUF (random weights: only a grammar makes it write a valid call or JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import ollama
import pytest

from impetus_cli.errors import EngineError
from tests.fixtures.fake_engine import FakeEngine
from tests.test_server_ollama import HELLO, api, call, ndjson

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "list_files", "parameters": {"type": "object", "properties": {}}},
    },
]
Script = list[str | tuple[str, int] | BaseException]
CALLS: Script = [
    "I will look.",
    "<tool_",
    'call>\n{"name": "read_file", "arguments": {"path": "server.py"}}\n</tool_call>',
    '<tool_call>{"name": "list_files", "arguments": {}}</tool_call>',
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def thinking_server(tmp_path: Path) -> Iterator[str]:
    """A scripted model of an architecture that reasons between <think> tags."""
    from impetus_cli.runtime.manager import ModelManager
    from tests.fixtures.fake_engine import fake_info, fake_model
    from tests.fixtures.servers import Registry, server_settings, start_server

    FakeEngine.reset()
    model = fake_model(tmp_path, "thinker")
    settings = server_settings()
    manager = ModelManager(
        settings,
        store=Registry({"thinker": model.path}),
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: 100_000_000_000,
        allow_paths=False,
    )
    qwen3 = lambda m: replace(fake_info(m.path), architecture="qwen3")  # noqa: E731
    manager.models.info = qwen3  # type: ignore[method-assign,assignment]
    with start_server(manager, settings) as url:
        yield url


def test_streamed_tool_calls_arrive_whole_with_object_arguments(fake_server: str) -> None:
    FakeEngine.enqueue(CALLS)
    body = {"model": "fake", "messages": HELLO, "tools": TOOLS}
    lines = ndjson(call(fake_server, "POST", "/api/chat", body)[2])
    calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["read_file", "list_files"]
    assert calls[0]["function"]["arguments"] == {"path": "server.py"}
    assert calls[1]["function"]["arguments"] == {}
    assert [c["function"]["index"] for c in calls] == [0, 1] and all(c["id"] for c in calls)
    assert "".join(x["message"]["content"] for x in lines) == "I will look."
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


def test_whole_tool_calls_through_the_official_client(fake_server: str) -> None:
    FakeEngine.enqueue(CALLS[1:])
    reply = api(fake_server).chat(model="fake", messages=HELLO, tools=TOOLS, stream=False)
    calls = reply.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("read_file", {"path": "server.py"}),
        ("list_files", {}),
    ]
    assert reply.message.content == "" and reply.done_reason == "stop"


def test_a_conversation_with_tool_results_goes_on(fake_server: str) -> None:
    """The shape Cline's Ollama provider sends back: calls with object arguments, results
    naming their tool (and the call's id)."""
    FakeEngine.enqueue(["done"])
    history: list[dict[str, Any]] = [
        *HELLO,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "read_file", "arguments": {"path": "a.py"}}}],
        },
        {"role": "tool", "tool_name": "read_file", "content": "print(1)"},
    ]
    reply = api(fake_server).chat(model="fake", messages=history, tools=TOOLS)
    assert reply.message.content == "done" and not reply.message.tool_calls


def test_thinking_is_its_own_field_streamed_and_whole(thinking_server: str) -> None:
    script: Script = ["<think>", "hmm, ", "easy", "</think>", "It is ", "4."]
    FakeEngine.enqueue(script)
    body = {"model": "thinker", "messages": HELLO, "think": True}
    lines = ndjson(call(thinking_server, "POST", "/api/chat", body)[2])
    assert "".join(x["message"].get("thinking", "") for x in lines) == "hmm, easy"
    assert "".join(x["message"]["content"] for x in lines) == "It is 4."
    FakeEngine.enqueue(script)
    whole = api(thinking_server).chat(model="thinker", messages=HELLO, think=True, stream=False)
    assert (whole.message.thinking, whole.message.content) == ("hmm, easy", "It is 4.")
    FakeEngine.enqueue(script)
    generated = api(thinking_server).generate(model="thinker", prompt="2+2?", think=True)
    assert (generated.thinking, generated.response) == ("hmm, easy", "It is 4.")


def test_show_says_a_reasoning_model_thinks(thinking_server: str) -> None:
    assert "thinking" in (api(thinking_server).show("thinker").capabilities or [])


def test_an_engine_failure_after_streaming_began_is_an_error_line(fake_server: str) -> None:
    FakeEngine.enqueue(["Hel", "lo", EngineError("the GPU fell over")])
    lines = ndjson(call(fake_server, "POST", "/api/chat", {"model": "fake", "messages": HELLO})[2])
    assert lines[-1] == {"error": "the GPU fell over"}
    assert "".join(x["message"]["content"] for x in lines[:-1]) == "Hello"
    FakeEngine.enqueue(["Hel", EngineError("the GPU fell over")])
    with pytest.raises(ollama.ResponseError, match="the GPU fell over"):
        list(api(fake_server).chat(model="fake", messages=HELLO, stream=True))


def _tiny(url: str, **kw: Any) -> Any:
    options = {"temperature": 0, "num_predict": 200}
    return api(url).chat(model="tiny", messages=ASK, options=options, **kw)


def test_a_required_tool_choice_makes_the_tiny_model_call_a_tool(tiny_server: str) -> None:
    # tool_choice is not Ollama's own field; Cline's Ollama provider sends OpenAI's
    body = {
        "model": "tiny",
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "options": {"temperature": 0, "num_predict": 200},
    }
    lines = ndjson(call(tiny_server, "POST", "/api/chat", body)[2])
    calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert isinstance(calls[0]["function"]["arguments"]["city"], str)
    assert "<tool_call>" not in "".join(x["message"]["content"] for x in lines)


def test_a_named_tool_choice_calls_that_tool(tiny_server: str) -> None:
    status, _, raw = call(
        tiny_server,
        "POST",
        "/api/chat",
        {
            "model": "tiny",
            "messages": ASK,
            "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "stream": False,
            "options": {"temperature": 0, "num_predict": 200},
        },
    )
    calls = json.loads(raw)["message"]["tool_calls"]
    assert status == 200 and calls and {c["function"]["name"] for c in calls} == {"get_time"}
    assert calls[0]["function"]["arguments"]["zone"] in ("UTC", "CET")


def test_format_json_and_a_schema_make_the_reply_json(tiny_server: str) -> None:
    loose = _tiny(tiny_server, format="json")
    assert (loose.message.content or "").lstrip().startswith("{")  # free keys may run long
    if loose.done_reason == "stop":
        assert isinstance(json.loads(loose.message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["age", "ok"],
    }
    strict = json.loads(_tiny(tiny_server, format=schema).message.content or "")
    assert isinstance(strict["age"], int) and isinstance(strict["ok"], bool)
