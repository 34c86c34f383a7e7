"""anthropic_parse: Messages API JSON -> the runtime's ChatRequest, without HTTP; the recorded
Claude Code requests among the inputs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.types import ChatMessage, Reasoning, ToolCall
from impetus_cli.server.protocols.anthropic_parse import messages_request
from tests.fixtures.recorded import load_recorded

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def parse(**body: Any) -> Any:
    return messages_request({"model": "m", "max_tokens": 8, **body})


def turns(name: str) -> list[dict[str, Any]]:
    return [r.body for r in load_recorded(name) if r.path == "/v1/messages"]


def test_claude_codes_follow_up_becomes_system_user_call_and_result() -> None:
    first, second = (messages_request(body) for body in turns("claude-code"))
    req = second.request
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool"]
    system, user, assistant, result = req.messages
    assert system.content is not None and system.content.startswith("You are a Claude agent")
    assert "x-anthropic-billing-header" not in system.content
    assert user.content is not None and user.content.endswith("</system-reminder>")
    assert "List the files in this directory" in user.content
    assert "<system-reminder>\nAvailable agent types" in user.content
    (call,) = assistant.tool_calls
    assert call.name == "Bash" and json.loads(call.arguments)["command"] == "ls -a"
    assert result.tool_call_id == call.id and result.name == "Bash"
    assert result.content == ".\n..\nREADME.md"
    assert second.stream and not second.one_call and req.sampling.max_tokens == 32000
    assert len(req.tools) == 24 and {"Bash", "Read", "Edit"} <= {t.name for t in req.tools}
    assert req.reasoning == Reasoning(enabled=None, effort="high")  # adaptive, effort high
    # the first turn is a prefix of the second: its messages come back unchanged
    assert first.request.messages == req.messages[:2]


def test_claude_code_on_a_claude_model_name_asks_for_a_thinking_budget() -> None:
    req = messages_request(turns("claude-code-sonnet")[1]).request
    assert req.reasoning == Reasoning(enabled=True, budget_tokens=31999)
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool"]


def test_the_billing_line_that_changes_every_request_leaves_the_prompt_unchanged() -> None:
    body = turns("claude-code")[0]
    other = copy.deepcopy(body)
    other["system"][0]["text"] = (
        "x-anthropic-billing-header: cc_version=2.1.198.a1b; cc_entrypoint=cli; cch=9f3e2;"
    )
    assert messages_request(body).request == messages_request(other).request
    inline = parse(
        system="x-anthropic-billing-header: cc_version=1; cch=77;\nYou help.",
        messages=[{"role": "user", "content": "hi"}],
    )
    assert inline.request.messages[0] == ChatMessage("system", "You help.")


def test_system_blocks_and_leading_system_messages_make_one_system_prompt() -> None:
    req = parse(
        system=[
            {"type": "text", "text": "A."},
            {"type": "text", "text": "B.", "cache_control": {}},
        ],
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "C."}]},
            {"role": "user", "content": "hi"},
        ],
    ).request
    assert req.messages == (ChatMessage("system", "A.\nB.\n\nC."), ChatMessage("user", "hi"))


def test_consecutive_user_turns_are_one_turn_as_anthropic_joins_them() -> None:
    req = parse(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "system", "content": "be brief"},
        ]
    ).request
    assert req.messages == (
        ChatMessage("user", "one\n\ntwo\n\n<system-reminder>\nbe brief\n</system-reminder>"),
    )


def test_tool_results_become_tool_messages_in_order_with_errors_said() -> None:
    req = parse(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two calls.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a"}},
                    {"type": "tool_use", "id": "t2", "name": "list", "input": {}},
                    {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "text of a"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "no such directory"}],
                    },
                    {"type": "web_search_tool_result", "tool_use_id": "s1", "content": []},
                    {"type": "text", "text": "Now answer."},
                ],
            },
        ]
    ).request
    assert req.messages[1:] == (
        ChatMessage(
            "assistant",
            "Calling.",
            tool_calls=(ToolCall("t1", "read", '{"path": "a"}'), ToolCall("t2", "list", "{}")),
            reasoning="Two calls.",
        ),
        ChatMessage("tool", "text of a", tool_call_id="t1", name="read"),
        ChatMessage("tool", "Error: no such directory", tool_call_id="t2", name="list"),
        ChatMessage("user", "Now answer."),
    )


def test_images_and_text_documents_are_read() -> None:
    req = parse(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.org/a.png"}},
                    {"type": "document", "title": "Notes",
                     "source": {"type": "text", "media_type": "text/plain", "data": "hello"}},
                ],
            }
        ]
    ).request  # fmt: skip
    (user,) = req.messages
    assert user.images == (f"data:image/png;base64,{PNG}", "https://x.org/a.png")
    assert user.content == "Notes\nhello"
    with pytest.raises(ImpetusError, match="PDF"):
        parse(messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": PNG}}]}])  # fmt: skip


def test_tools_without_type_are_functions_and_server_tools_are_skipped() -> None:
    call = parse(
        messages=[{"role": "user", "content": "hi"}],
        tools=[
            {"name": "Bash", "description": "Run", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "Edit", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"},
            {"type": "bash_20250124", "name": "bash"},
        ],
    )
    assert [(t.name, t.description) for t in call.request.tools] == [("Bash", "Run"), ("Edit", "")]


@pytest.mark.parametrize(
    ("choice", "runtime", "parallel"),
    [
        (None, None, True),
        ({"type": "auto"}, "auto", True),
        ({"type": "any"}, "required", True),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "Bash"}, "Bash", True),
        ({"type": "none"}, "none", True),
    ],
)
def test_tool_choice_maps_onto_the_runtimes(choice: Any, runtime: Any, parallel: bool) -> None:
    tools = [{"name": "Bash", "input_schema": {"type": "object"}}]
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    call = parse(**body, **({"tool_choice": choice} if choice else {}))
    assert call.request.tool_choice == runtime
    assert call.request.parallel_tool_calls is parallel and call.one_call is not parallel


@pytest.mark.parametrize(
    ("extra", "reasoning"),
    [
        ({}, Reasoning()),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, Reasoning(True, None, 2048)),
        ({"thinking": {"type": "adaptive"}}, Reasoning()),
        ({"thinking": {"type": "disabled"}}, Reasoning(enabled=False)),
        ({"output_config": {"effort": "low"}}, Reasoning(effort="low")),
        (
            {"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}},
            Reasoning(effort="high"),
        ),
    ],
)
def test_thinking_and_effort_map_onto_reasoning(extra: Any, reasoning: Reasoning) -> None:
    assert parse(messages=[{"role": "user", "content": "hi"}], **extra).request.reasoning == (
        reasoning
    )


def test_sampling_and_output_format() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    req = parse(
        messages=[{"role": "user", "content": "hi"}],
        temperature=0,
        top_p=0.5,
        top_k=3,
        stop_sequences=["\n\nHuman:"],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    ).request
    assert (req.sampling.temperature, req.sampling.top_p, req.sampling.top_k) == (0.0, 0.5, 3)
    assert req.sampling.stop == ("\n\nHuman:",) and req.sampling.max_tokens == 8
    assert req.response_format == {"type": "json_schema", "json_schema": {"schema": schema}}


def test_max_tokens_may_be_zero_or_absent() -> None:
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert messages_request({**ask, "max_tokens": 0}).request.sampling.max_tokens == 0
    assert messages_request(ask).request.sampling.max_tokens is None
