"""OpenAI Responses requests -> the runtime's ChatRequest: pure functions, no HTTP.

The recorded Codex requests are the main input: everything Codex sends must be accepted and
land in the conversation the model sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.types import Reasoning
from impetus_cli.server.protocols.responses_items import decode_reasoning, encode_reasoning
from impetus_cli.server.protocols.responses_parse import (
    PreviousResponseNotFound,
    responses_request,
)
from impetus_cli.server.protocols.responses_store import ResponseStore
from tests.fixtures.recorded import load_recorded

FN = {
    "type": "function",
    "name": "read_file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
}
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def ask(**body: Any) -> Any:
    return responses_request({"model": "m", "input": "hi", **body})


def refused(param: str, **body: Any) -> ImpetusError:
    with pytest.raises(ImpetusError) as info:
        responses_request({"model": "m", **body})
    assert info.value.status == 400 and info.value.param == param, info.value.message
    return info.value


def test_codex_first_turn_keeps_every_message_and_the_tools_the_model_can_call() -> None:
    body = load_recorded("codex")[0].body
    call = responses_request(body)
    chat = call.chat
    assert [m.role for m in chat.messages] == ["system", "system", "user", "user"]
    assert chat.messages[0].content.startswith("You are a coding agent running in the Codex CLI")
    assert chat.messages[-1].content == "List the files in this directory, then say done."
    names = [t.name for t in chat.tools]
    assert "exec_command" in names and "view_image" in names
    spaced = [n for n in names if n.startswith("multi_agent_v1__")]
    assert spaced and call.tool_names[spaced[0]].namespace == "multi_agent_v1"
    assert not any("web_search" in n for n in names)  # a hosted tool: not the model's to call
    assert chat.tool_choice == "auto" and call.stream and not call.store
    assert call.include == {"reasoning.encrypted_content"}
    assert call.echo["prompt_cache_key"] == body["prompt_cache_key"]


def test_codex_follow_up_replays_its_call_and_the_output_as_a_tool_message() -> None:
    body = load_recorded("codex")[1].body
    messages = responses_request(body).chat.messages
    call, result = messages[-2], messages[-1]
    assert call.role == "assistant" and call.content is None
    assert call.tool_calls[0].name == "exec_command"
    assert json.loads(call.tool_calls[0].arguments) == {"cmd": "ls -a"}
    assert result.role == "tool" and result.tool_call_id == call.tool_calls[0].id
    assert result.name == "exec_command" and "README.md" in (result.content or "")


def test_every_recorded_responses_request_parses() -> None:
    bodies = [r.body for c in ("codex", "codex-oss") for r in load_recorded(c)]
    bodies = [b for b in bodies if isinstance(b, dict) and "input" in b]
    assert len(bodies) >= 6
    for body in bodies:
        assert responses_request(body).chat.messages[-1].role in ("user", "tool")


def test_instructions_come_first_and_developer_is_a_system_message() -> None:
    items = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "x"}]
    messages = ask(instructions="You help.", input=items).chat.messages
    assert [(m.role, m.content) for m in messages] == [
        ("system", "You help."),
        ("system", "be brief"),
        ("user", "x"),
    ]


def test_one_assistant_turn_of_reasoning_text_and_parallel_calls_is_one_message() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "go"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [
            {"type": "reasoning_text", "text": "think"}]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Looking."}]},
        {"type": "function_call", "call_id": "c1", "name": "read_file", "arguments": '{"path":"a"}'},
        {"type": "function_call", "call_id": "c2", "name": "read_file", "arguments": '{"path":"b"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "A"},
        {"type": "function_call_output", "call_id": "c2", "output": [
            {"type": "input_text", "text": "B"}]},
    ]  # fmt: skip
    messages = ask(input=items, tools=[FN]).chat.messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool"]
    turn = messages[1]
    assert turn.reasoning == "think" and turn.content == "Looking."
    assert [c.id for c in turn.tool_calls] == ["c1", "c2"]
    assert [(m.tool_call_id, m.content) for m in messages[2:]] == [("c1", "A"), ("c2", "B")]


def test_our_own_encrypted_reasoning_comes_back_and_others_stay_opaque() -> None:
    assert decode_reasoning(encode_reasoning("step one ✓")) == "step one ✓"
    ours = {"type": "reasoning", "summary": [], "encrypted_content": encode_reasoning("mine")}
    theirs = {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA-opaque"}
    for item, expected in ((ours, "mine"), (theirs, None)):
        items = [{"role": "user", "content": "q"}, item, {"role": "assistant", "content": "a"}]
        assert ask(input=items).chat.messages[1].reasoning == expected


def test_namespaced_and_custom_calls_replay_under_the_names_the_model_saw() -> None:
    tools = [
        {"type": "namespace", "name": "mcp__fs__", "description": "files", "tools": [FN]},
        {"type": "custom", "name": "apply_patch", "description": "Apply a patch."},
    ]
    items = [
        {"role": "user", "content": "x"},
        {"type": "function_call", "call_id": "a", "namespace": "mcp__fs__", "name": "read_file",
         "arguments": "{}"},
        {"type": "custom_tool_call", "call_id": "b", "name": "apply_patch", "input": "*** Begin"},
    ]  # fmt: skip
    call = ask(input=items, tools=tools)
    assert [t.name for t in call.chat.tools] == ["mcp__fs__read_file", "apply_patch"]
    assert call.chat.tools[1].parameters["required"] == ["input"]
    calls = call.chat.messages[1].tool_calls
    assert [c.name for c in calls] == ["mcp__fs__read_file", "apply_patch"]
    assert json.loads(calls[1].arguments) == {"input": "*** Begin"}


def test_images_are_kept_and_files_are_refused_clearly() -> None:
    content = [{"type": "input_text", "text": "what is it?"},
               {"type": "input_image", "image_url": PIXEL, "detail": "auto"}]  # fmt: skip
    message = ask(input=[{"role": "user", "content": content}]).chat.messages[0]
    assert message.images == (PIXEL,) and message.content == "what is it?"
    file_part = [{"type": "input_file", "file_data": "x", "filename": "a.pdf"}]
    error = refused("input[0].content[0].type", input=[{"role": "user", "content": file_part}])
    assert "input_file" in error.message
    by_id = [{"type": "input_image", "file_id": "file-1"}]
    refused("input[0].content[0].file_id", input=[{"role": "user", "content": by_id}])


def test_text_format_becomes_the_runtime_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    assert ask(text=fmt).chat.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert ask(text={"format": {"type": "json_object"}}).chat.response_format == {
        "type": "json_object"
    }
    assert ask(text={"format": {"type": "text"}, "verbosity": "low"}).chat.response_format is None
    refused("text.format.schema", input="x", text={"format": {"type": "json_schema"}})
    refused("text.format.type", input="x", text={"format": {"type": "xml"}})


def test_sampling_reasoning_and_keep_alive() -> None:
    call = ask(max_output_tokens=64, temperature=0, top_p=0.5, reasoning={"effort": "low"})
    assert call.chat.sampling.max_tokens == 64 and call.chat.sampling.temperature == 0.0
    assert call.chat.sampling.top_p == 0.5
    assert call.chat.reasoning == Reasoning(enabled=True, effort="low")
    assert ask(reasoning={"effort": "none"}).chat.reasoning == Reasoning(enabled=False)
    assert ask(reasoning={"summary": "auto"}).chat.reasoning == Reasoning()
    assert ask(keep_alive=0).chat.keep_alive == 0.0
    refused("max_output_tokens", input="x", max_output_tokens=0)
    refused("reasoning.effort", input="x", reasoning={"effort": "huge"})
    refused("temperature", input="x", temperature="hot")


def test_tool_choice_forms() -> None:
    spaced = {"type": "namespace", "name": "ns", "description": "", "tools": [FN]}
    other = {**FN, "name": "list_files"}
    assert ask(tools=[FN], tool_choice="required").chat.tool_choice == "required"
    named = {"type": "function", "name": "read_file"}
    assert ask(tools=[FN], tool_choice=named).chat.tool_choice == "read_file"
    assert ask(tools=[spaced], tool_choice=named).chat.tool_choice == "ns__read_file"
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [named]}
    chat = ask(tools=[FN, other], tool_choice=allowed).chat
    assert [t.name for t in chat.tools] == ["read_file"] and chat.tool_choice == "required"
    refused("tool_choice", input="x", tools=[{"type": "web_search"}], tool_choice="required")
    refused("tool_choice", input="x", tools=[FN], tool_choice={"type": "web_search_preview"})
    refused(
        "tool_choice.name", input="x", tools=[FN], tool_choice={"type": "function", "name": "nope"}
    )


def test_bad_requests_are_400s_naming_the_field() -> None:
    refused("input")
    refused("input", input=[])
    refused("model", input="x", model="")
    refused("input[0].role", input=[{"role": "robot", "content": "x"}])
    refused("input[0].type", input=[{"type": "teleport"}])
    refused("tools[0].name", input="x", tools=[{"type": "function"}])
    refused("tools[1].name", input="x", tools=[FN, FN])
    refused("background", input="x", background=True)
    refused("conversation", input="x", conversation="conv_1")
    refused("include", input="x", include="reasoning.encrypted_content")
    refused("input", input=[{"role": "system", "content": "only instructions"}])


def test_hosted_tool_items_in_the_history_are_left_out() -> None:
    items = [
        {"role": "user", "content": "search"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {}},
        {"role": "assistant", "content": "found"},
    ]
    assert [m.role for m in ask(input=items).chat.messages] == ["user", "assistant"]


def test_previous_response_id_continues_the_stored_conversation() -> None:
    store = ResponseStore()
    first = {"id": "resp_1", "output": [
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "read_file",
         "arguments": "{}", "status": "completed"}]}  # fmt: skip
    store.put(first, [{"type": "message", "role": "user", "content": "read it"}], None)
    body = {
        "model": "m",
        "previous_response_id": "resp_1",
        "instructions": "new instructions",
        "input": [{"type": "function_call_output", "call_id": "c1", "output": "data"}],
        "tools": [FN],
    }
    call = responses_request(body, store)
    assert [m.role for m in call.chat.messages] == ["system", "user", "assistant", "tool"]
    assert call.chat.messages[0].content == "new instructions"
    assert call.chat.messages[3].name == "read_file"
    assert call.input_items == tuple(body["input"])  # only this turn's items are kept with it
    ref = {"model": "m", "input": [{"type": "item_reference", "id": "fc_1"},
                                   {"type": "function_call_output", "call_id": "c1", "output": "x"}]}  # fmt: skip
    assert responses_request(ref, store).chat.messages[0].tool_calls[0].id == "c1"
    with pytest.raises(PreviousResponseNotFound) as info:
        responses_request({**body, "previous_response_id": "resp_gone"}, store)
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"
