"""Tool calls on the wire, exactly as CLIENTS.md describes, from a scripted engine, plus a
real-engine smoke test; reasoning and mid-stream errors."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from impetus_cli.errors import EngineError
from tests.fixtures.fake_engine import FakeEngine
from tests.test_server_openai import client, raw_post, sse_events

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "strict": True,
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "list_files", "parameters": {"type": "object", "properties": {}}},
    },
]
CALLS = [
    "I will look.",
    "<tool_",
    'call>\n{"name": "read_file", "arguments": {"path": "server.py"}}\n</tool_call>',
    '<tool_call>{"name": "list_files", "arguments": {}}</tool_call>',
]


def test_streamed_tool_calls_have_the_shape_clients_expect(fake_server: str) -> None:
    FakeEngine.enqueue(CALLS)
    body = {
        "model": "fake",
        "stream": True,
        "tools": TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "messages": [{"role": "user", "content": "read server.py"}],
    }
    chunks = [
        json.loads(e)
        for e in sse_events(raw_post(fake_server, "/v1/chat/completions", body)[2])[:-1]
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": calls[0]["id"],
        "type": "function",
        "function": {"name": "read_file", "arguments": ""},
    }
    assert calls[1] == {"index": 0, "function": {"arguments": '{"path": "server.py"}'}}
    assert calls[2]["index"] == 1 and calls[2]["function"]["name"] == "list_files"
    assert calls[3] == {"index": 1, "function": {"arguments": "{}"}}
    assert all("function" in c for c in calls)
    assert "".join(d.get("content") or "" for d in deltas) == "I will look."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_non_streamed_tool_calls(fake_server: str) -> None:
    FakeEngine.enqueue(CALLS[1:3])
    reply = client(fake_server).chat.completions.create(
        model="fake", tools=TOOLS, messages=[{"role": "user", "content": "read server.py"}]
    )  # type: ignore[arg-type]
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls[0].function.name == "read_file"
    assert json.loads(message.tool_calls[0].function.arguments) == {"path": "server.py"}


def test_logprobs_of_text_the_tool_parser_held_back_still_arrive(fake_server: str) -> None:
    """ "<tool" might open a call, so its text waits for the next piece; its logprob waits with
    it instead of being lost."""
    ask: dict[str, Any] = {"logprobs": True, "top_logprobs": 2, "tools": TOOLS}
    messages = [{"role": "user", "content": "x"}]
    FakeEngine.enqueue(["a", "<tool", " b"])
    reply = client(fake_server).chat.completions.create(model="fake", messages=messages, **ask)
    content = reply.choices[0].logprobs.content
    assert reply.choices[0].message.content == "a<tool b"
    assert [(e.token, e.logprob) for e in content] == [("1", -0.1), ("2", -0.2), ("3", -0.3)]
    assert [len(e.top_logprobs) for e in content] == [2, 2, 2]
    FakeEngine.enqueue(["a", "<tool", " b"])
    stream = client(fake_server).chat.completions.create(
        model="fake", messages=messages, stream=True, **ask
    )
    per_chunk = [
        ([e.token for e in c.choices[0].logprobs.content], c.choices[0].delta.content)
        for c in stream
        if c.choices and c.choices[0].logprobs
    ]
    assert per_chunk == [(["1"], "a"), (["2", "3"], "<tool b")]


def test_tool_tags_pass_through_verbatim_without_tools(fake_server: str) -> None:
    """Cline's XML tool protocol (and any tag) is plain text when the request carries no tools."""
    FakeEngine.enqueue(["<read_file><path>a.py</path></read_file>", "<tool_call>{}</tool_call>"])
    reply = client(fake_server).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "x"}]
    )
    assert (
        reply.choices[0].message.content
        == "<read_file><path>a.py</path></read_file><tool_call>{}</tool_call>"
    )
    assert reply.choices[0].finish_reason == "stop"


def test_tool_choice_none_disables_parsing(fake_server: str) -> None:
    FakeEngine.enqueue([CALLS[3]])
    reply = client(fake_server).chat.completions.create(
        model="fake", tools=TOOLS, tool_choice="none", messages=[{"role": "user", "content": "x"}]
    )  # type: ignore[arg-type]
    assert reply.choices[0].message.tool_calls is None and "<tool_call>" in (
        reply.choices[0].message.content or ""
    )


def test_an_engine_failure_after_streaming_began_is_an_error_event(fake_server: str) -> None:
    FakeEngine.enqueue(["partial", EngineError("the backend crashed")])
    body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    status, _, raw = raw_post(fake_server, "/v1/chat/completions", body)
    events = sse_events(raw)
    assert status == 200 and json.loads(events[-1])["error"]["message"] == "the backend crashed"
    FakeEngine.enqueue(["fine"])  # the server keeps serving
    assert (
        client(fake_server)
        .chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
        .choices[0]
        .message.content
        == "fine"
    )


def test_n_other_than_one_is_a_clear_400(fake_server: str) -> None:
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client(fake_server).chat.completions.create(
            model="fake", n=2, messages=[{"role": "user", "content": "x"}]
        )
