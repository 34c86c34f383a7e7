"""Ollama's request bodies -> runtime requests, as pure functions (no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.types import ChatRequest, CompletionRequest, Reasoning
from impetus_cli.server.protocols import ollama_parse as parse
from tests.fixtures.recorded import load_recorded

USER = {"role": "user", "content": "hi"}


def chat(**body: Any) -> ChatRequest:
    req = parse.chat_request({"model": "m", "messages": [USER], **body})
    assert isinstance(req, ChatRequest)
    return req


def refused(fn: Any, body: Any) -> str:
    with pytest.raises(ImpetusError) as info:
        fn(body)
    assert info.value.status == 400
    return str(info.value.param)


def test_options_become_the_sampling_settings() -> None:
    opts = {
        "num_predict": 64,
        "temperature": 0,
        "top_p": 0.5,
        "top_k": 7,
        "min_p": 0.1,
        "seed": 3,
        "repeat_penalty": 1.2,
        "stop": ["\n\n", "```"],
        "num_ctx": 8192,
        "num_thread": 8,
        "num_gpu": 99,
        "mirostat": 0,
        "use_mmap": True,
    }
    req = chat(options=opts)
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.min_p) == (64, 0.0, 0.5, 7, 0.1)
    assert (s.seed, s.repeat_penalty, s.stop) == (3, 1.2, ("\n\n", "```"))
    assert req.num_ctx == 8192


@pytest.mark.parametrize(
    ("options", "max_tokens", "seed", "repeat"),
    [
        ({"num_predict": -1, "seed": -1}, None, None, 1.0),  # no limit of its own; random
        ({"num_predict": -2, "repeat_penalty": 0}, parse.FILL_CONTEXT, None, 1.0),
        ({}, None, None, 1.0),
    ],
)
def test_ollamas_special_values(
    options: dict[str, Any], max_tokens: int | None, seed: int | None, repeat: float
) -> None:
    s = chat(options=options).sampling
    assert (s.max_tokens, s.seed, s.repeat_penalty) == (max_tokens, seed, repeat)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"options": {"num_predict": 0}}, "options.num_predict"),
        ({"options": {"temperature": "hot"}}, "options.temperature"),
        ({"options": {"num_ctx": 0}}, "options.num_ctx"),
        ({"options": {"stop": [1]}}, "options.stop"),
        ({"options": "fast"}, "options"),
        ({"think": "deeply"}, "think"),
        ({"format": "yaml"}, "format"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": "x", "images": ["%%"]}]},
            "messages[0].images[0]",
        ),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ],
)
def test_bad_values_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    full = {"model": "m", "messages": [USER], **body}
    assert refused(lambda b: (parse.chat_request(b), parse.wants(b)), full) == param


def test_think_format_and_keep_alive() -> None:
    assert chat(think=True).reasoning == Reasoning(enabled=True)
    assert chat(think=False).reasoning == Reasoning(enabled=False)
    assert chat(think="high").reasoning == Reasoning(enabled=True, effort="high")
    assert chat().reasoning == Reasoning()
    assert chat(format="json").response_format == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = chat(format=schema).response_format or {}
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema
    assert chat(format="").response_format is None
    assert chat(keep_alive="5m").keep_alive == 300 and chat(keep_alive=-1).keep_alive == -1
    assert chat(keep_alive=1800).keep_alive == 1800  # Continue's


def test_tool_calls_keep_their_arguments_as_json_and_ids_stable_across_turns() -> None:
    history = [
        USER,
        {
            "role": "assistant",
            "tool_calls": [
                {"function": {"name": "read", "arguments": {"path": "a.py", "n": 2}}},
                {"id": "call_x", "function": {"name": "list", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "[]", "tool_name": "list"},
        {"role": "tool", "content": "print(1)", "tool_name": "read"},
    ]
    first, again = chat(messages=history), chat(messages=history)
    assert first == again
    calls = first.messages[1].tool_calls
    assert [c.id for c in calls] == ["call_1_0", "call_x"]
    assert json.loads(calls[0].arguments) == {"path": "a.py", "n": 2}
    assert first.messages[1].content is None
    results = first.messages[2:]
    assert [(m.tool_call_id, m.name) for m in results] == [("call_x", "list"), ("call_1_0", "read")]


def test_unnamed_tool_results_answer_the_calls_in_order() -> None:
    calls: list[dict[str, Any]] = [{"function": {"name": n, "arguments": {}}} for n in ("a", "b")]
    history = [
        USER,
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
    ]
    results = chat(messages=history).messages[2:]
    assert [(m.tool_call_id, m.name) for m in results] == [("call_1_0", "a"), ("call_1_1", "b")]


def test_assistant_thinking_and_images_are_kept() -> None:
    history = [
        {"role": "user", "content": "look", "images": ["aGVsbG8="]},
        {"role": "assistant", "content": "ok", "thinking": "it says hello"},
    ]
    req = chat(messages=history)
    assert req.messages[0].images == ("data:image/png;base64,aGVsbG8=",)
    assert req.messages[1].reasoning == "it says hello"


def test_generate_is_a_chat_turn_unless_raw_or_fill_in_the_middle() -> None:
    templated = parse.generate_request({"model": "m", "prompt": "hi", "system": "be brief"})
    assert isinstance(templated, ChatRequest)
    assert [(m.role, m.content) for m in templated.messages] == [
        ("system", "be brief"),
        ("user", "hi"),
    ]
    raw = parse.generate_request({"model": "m", "prompt": "[INST] hi [/INST]", "raw": True})
    assert isinstance(raw, CompletionRequest) and raw.suffix is None
    fim = parse.generate_request({"model": "m", "prompt": "def f(", "suffix": ")\n"})
    assert isinstance(fim, CompletionRequest) and fim.suffix == ")\n"
    empty_suffix = parse.generate_request({"model": "m", "prompt": "def f(", "suffix": ""})
    assert isinstance(empty_suffix, ChatRequest)  # as Ollama: no suffix, no FIM


def test_requests_without_messages_or_prompt_only_load_or_unload() -> None:
    load = parse.chat_request({"model": "m", "messages": []})
    assert load == parse.LoadOnly("m", unload=False, keep_alive=None)
    unload = parse.generate_request({"model": "m", "keep_alive": 0})
    assert unload == parse.LoadOnly("m", unload=True, keep_alive=0)


def test_names_embeddings_and_pulls() -> None:
    assert parse.name_request({"name": "qwen:7b"}) == "qwen:7b"  # Continue's /api/show
    assert parse.name_request({"model": " qwen:7b "}) == "qwen:7b"
    assert refused(parse.name_request, {}) == "model"
    assert parse.embed_request({"model": "m", "input": "a"}) == ("m", ["a"], None)
    assert parse.embed_request({"model": "m", "input": ["a", "b"], "dimensions": 8})[2] == 8
    assert refused(parse.embed_request, {"model": "m", "input": [1]}) == "input"
    assert parse.embeddings_request({"model": "m", "prompt": "a"}) == ("m", "a")
    assert parse.pull_request({"model": "m"}) == ("m", True)
    assert parse.pull_request({"model": "m", "stream": False}) == ("m", False)


def test_clines_recorded_ollama_requests_parse() -> None:
    for recorded in load_recorded("cline-ollama"):
        if recorded.path != "/api/chat":
            continue
        req = parse.chat_request(recorded.body)
        assert isinstance(req, ChatRequest)
        assert req.num_ctx == 32768 and req.tool_choice == "auto" and len(req.tools) == 25
        assert req.messages[0].role == "system"
        tool_turns = [m for m in req.messages if m.role == "tool"]
        for result in tool_turns:
            call = req.messages[-2].tool_calls[0]
            assert (result.tool_call_id, result.name) == (call.id, "run_commands")
            assert json.loads(call.arguments) == {"commands": ["ls -a"]}
