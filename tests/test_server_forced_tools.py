"""Forced tool choice, llama-server's grammar extensions and their bounds, through the server
with the official openai client on the tiny GGUF (random weights: only a grammar can make it
write a valid call, which is what these tests check)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.test_server_openai import client, raw_post

pytest.importorskip("llama_cpp")

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
        "description": "The time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _ask(url: str, **kw: Any) -> Any:
    return client(url).chat.completions.create(
        model="tiny", messages=ASK, temperature=0, max_tokens=200, **kw
    )


def test_a_named_tool_choice_makes_the_model_call_that_tool(tiny_server: str) -> None:
    reply = _ask(
        tiny_server,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"] * len(calls) and calls
    assert json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET")


def test_required_streams_a_valid_call_in_deltas(tiny_server: str) -> None:
    stream = client(tiny_server).chat.completions.create(
        model="tiny",
        messages=ASK,
        temperature=0,
        max_tokens=200,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        stream=True,
    )
    names, args, finish, text = [], "", None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            if call.function and call.function.name:
                names.append(call.function.name)
            args += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"
    assert isinstance(json.loads(args)["city"], str)
    assert "<tool_call>" not in text


def test_a_reply_cut_inside_a_forced_call_is_length_and_leaks_no_partial_call(
    tiny_server: str,
) -> None:
    reply = client(tiny_server).chat.completions.create(
        model="tiny",
        messages=ASK,
        temperature=0,
        max_tokens=4,
        tools=[WEATHER],
        tool_choice="required",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.tool_calls
    assert "<tool_call>" not in (choice.message.content or "")


def test_the_grammar_extension_constrains_the_reply(tiny_server: str) -> None:
    reply = _ask(tiny_server, extra_body={"grammar": 'root ::= "hello" " " "world"'})
    assert reply.choices[0].message.content == "hello world"


def test_llama_server_json_schema_extension(tiny_server: str) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    reply = _ask(tiny_server, extra_body={"json_schema": schema})
    assert isinstance(json.loads(reply.choices[0].message.content or "")["ok"], bool)


@pytest.mark.parametrize(
    "extra",
    [
        {"grammar": "root ::= " + "(" * 5000 + '"x"' + ")" * 5000},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "maxLength": 50000}},
            }
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "minLength": 10**7}},
            }
        },
    ],
    ids=["deep grammar", "maxLength 50000", "minLength 1e7"],
)
def test_grammars_that_would_crash_llama_cpp_are_400s_and_the_server_lives(
    tiny_server: str, extra: dict[str, Any]
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _ask(tiny_server, extra_body=extra)
    assert info.value.status_code == 400
    status, _, _ = raw_post(
        tiny_server, "/v1/chat/completions", {"model": "tiny", "messages": ASK, "max_tokens": 2}
    )
    assert status == 200
