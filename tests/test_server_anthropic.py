"""`POST /v1/messages` and `/v1/messages/count_tokens` with the official `anthropic` SDK and
raw HTTP, on the tiny GGUF through llama.cpp (random weights: only a grammar makes it write a
valid call, which is what the tool tests check)."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import anthropic
import pytest

from tests.test_server_openai import raw_post

pytest.importorskip("llama_cpp")

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "The time in a time zone.",
    "input_schema": {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# The SDK has no sampling arguments any more; the API still takes them.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}
TOO_LONG = re.compile(r"^prompt is too long: (\d+) tokens > (\d+) maximum$")


def api(url: str, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url, api_key=kw.pop("api_key", "sk-anything"), max_retries=0, **kw
    )


def events_of(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of an Anthropic stream, checking the wire format: every event is
    one ``event:`` line and one ``data:`` line of JSON whose ``type`` is the event's name."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == name[len("event: ") :]
        out.append((payload["type"], payload))
    return out


def post(url: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, str], bytes]:
    return raw_post(url, "/v1/messages?beta=true", body, headers)


def check_blocks(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The content blocks a stream built, checking its grammar: message_start, blocks (start,
    deltas, stop; indexes 0, 1, ...), message_delta, message_stop; pings anywhere between."""
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    blocks: list[dict[str, Any]] = []
    open_block: dict[str, Any] | None = None
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_block is None and data["index"] == len(blocks)
            open_block = dict(data["content_block"], partial="")
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == len(blocks)
            delta = data["delta"]
            key = {"text_delta": "text", "thinking_delta": "thinking"}.get(delta["type"])
            if key is None:
                assert delta["type"] == "input_json_delta" and open_block["type"] == "tool_use"
                open_block["partial"] += delta["partial_json"]
            else:
                open_block[key] += delta[key]
        elif name == "content_block_stop":
            assert open_block is not None and data["index"] == len(blocks)
            blocks.append(open_block)
            open_block = None
        else:
            assert name == "ping", name
    assert open_block is None
    return blocks


def test_create_answers_a_message_with_anthropic_usage(tiny_server: str) -> None:
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    reply = api(tiny_server).messages.create(
        model="tiny", max_tokens=8, system=system, messages=ASK, **GREEDY
    )
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "tiny"
    assert reply.id.startswith("msg_") and all(b.type == "text" for b in reply.content)
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.stop_sequence is None
    assert reply.usage.output_tokens <= 8
    if reply.stop_reason == "max_tokens":
        assert reply.usage.output_tokens == 8
    counted = api(tiny_server).messages.count_tokens(model="tiny", system=system, messages=ASK)
    usage = reply.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == counted.input_tokens > 0
    assert usage.cache_creation_input_tokens == 0


def test_stream_sends_the_event_sequence_the_sdk_reads(tiny_server: str) -> None:
    body = {"model": "tiny", "max_tokens": 12, "temperature": 0, "stream": True, "messages": ASK}
    status, headers, raw = post(tiny_server, body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = events_of(raw)
    blocks = check_blocks(events)
    start, delta = events[0][1], events[-2][1]
    assert start["message"]["content"] == [] and start["message"]["stop_reason"] is None
    assert start["message"]["usage"]["input_tokens"] > 0
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["output_tokens"] <= 12
    assert all(b["type"] == "text" for b in blocks)
    with api(tiny_server).messages.stream(
        model="tiny", max_tokens=12, messages=ASK, **GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert final.usage.output_tokens <= 12 and final.stop_reason in ("end_turn", "max_tokens")


def test_what_claude_code_sends_is_accepted(tiny_server: str) -> None:
    """Its headers, the ?beta=true query, adaptive thinking with an effort, context
    management, metadata, a system message inside `messages`, tools without `type` and a
    server tool we do not run. (Its max_tokens of 32000 is clamped to the context: the recorded
    requests check that; a short reply keeps this test quick.)"""
    body = {
        "model": "tiny",
        "max_tokens": 16,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": '{"device_id":"x","session_id":"y"}'},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=abc12;"},
            {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "List the files."}]},
            {"role": "system", "content": "Agent types: claude, Explore."},
        ],
        "tools": [WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        "some_future_field": {"anything": True},
    }
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "x-app": "cli",
        "x-api-key": "sk-anything",
    }
    status, _, raw = post(tiny_server, body, **headers)
    assert status == 200
    assert check_blocks(events_of(raw)) is not None


def test_forced_tool_choice_any_answers_a_tool_use_block(tiny_server: str) -> None:
    reply = api(tiny_server).messages.create(
        model="tiny",
        max_tokens=200,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        **GREEDY,
    )
    calls = [b for b in reply.content if b.type == "tool_use"]
    assert reply.stop_reason == "tool_use" and len(calls) == 1
    assert calls[0].name in ("get_weather", "get_time") and isinstance(calls[0].input, dict)
    assert set(calls[0].input) == ({"city"} if calls[0].name == "get_weather" else {"zone"})


def test_a_named_tool_streams_its_input_as_json_deltas(tiny_server: str) -> None:
    ask: dict[str, Any] = {
        "model": "tiny",
        "max_tokens": 200,
        "temperature": 0,
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "tool", "name": "get_time"},
    }
    status, _, raw = post(tiny_server, {**ask, "stream": True})
    events = events_of(raw)
    calls = [b for b in check_blocks(events) if b["type"] == "tool_use"]
    assert status == 200 and calls and calls[0]["name"] == "get_time"
    assert calls[0]["input"] == {} and json.loads(calls[0]["partial"])["zone"] in ("UTC", "CET")
    assert calls[0]["id"] and events[-2][1]["delta"]["stop_reason"] == "tool_use"
    sdk = {k: v for k, v in ask.items() if k != "temperature"}
    with api(tiny_server).messages.stream(**sdk, **GREEDY) as stream:
        final = stream.get_final_message()
    used = [b for b in final.content if b.type == "tool_use"]
    assert used[0].name == "get_time" and used[0].input["zone"] in ("UTC", "CET")


def test_tool_choice_none_answers_without_calls(tiny_server: str) -> None:
    reply = api(tiny_server).messages.create(
        model="tiny",
        max_tokens=8,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        **GREEDY,
    )
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert all(b.type == "text" for b in reply.content)


def test_a_conversation_with_tool_results_is_answered_and_counted(tiny_server: str) -> None:
    history: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I need the weather.", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "b3BhcXVl"},
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {"zone": "CET"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [{"type": "text", "text": "clock unavailable"}],
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "text", "text": "Answer in one word."},
            ],
        },
    ]
    client = api(tiny_server)
    reply = client.messages.create(
        model="tiny", max_tokens=8, messages=history, tools=[WEATHER, TIME], **GREEDY
    )
    assert reply.stop_reason in ("end_turn", "max_tokens", "tool_use")
    whole = client.messages.count_tokens(model="tiny", messages=history, tools=[WEATHER, TIME])
    first = client.messages.count_tokens(model="tiny", messages=ASK, tools=[WEATHER, TIME])
    assert whole.input_tokens > first.input_tokens + 20


def test_a_prompt_over_the_context_is_the_400_claude_code_compacts_on(tiny_server: str) -> None:
    long = [{"role": "user", "content": "the word " * 3000}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        api(tiny_server).messages.create(model="tiny", max_tokens=8, messages=long)
    error = caught.value.body["error"]  # type: ignore[index]
    match = TOO_LONG.match(error["message"])
    assert error["type"] == "invalid_request_error" and match and match.group(2) == "2048"
    counted = api(tiny_server).messages.count_tokens(model="tiny", messages=long)
    assert counted.input_tokens == int(match.group(1)) > 2048
    status, headers, raw = post(
        tiny_server, {"model": "tiny", "max_tokens": 8, "stream": True, "messages": long}
    )  # refused before any event is streamed
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert json.loads(raw)["type"] == "error"


def test_stop_sequences_end_the_reply_and_are_named(tiny_server: str) -> None:
    """The reply is cut where the first of the client's stop sequences appears, and
    stop_sequence says which. Every request here finds the same prompt in the cache, so each
    is computed alike (greedy decoding of the same logits)."""
    client = api(tiny_server)
    ask: dict[str, Any] = {"model": "tiny", "messages": ASK, **GREEDY}
    client.messages.create(max_tokens=1, **ask)
    full = client.messages.create(max_tokens=24, **ask).content[0].text  # type: ignore[union-attr]
    assert len(full) >= 6, full
    stop = full[3:6]
    cut = full[: full.find(stop)]
    reply = client.messages.create(max_tokens=24, stop_sequences=["never-said", stop], **ask)
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == stop
    assert "".join(b.text for b in reply.content if b.type == "text") == cut
    body = {"model": "tiny", "messages": ASK, "temperature": 0, "max_tokens": 24}
    _, _, raw = post(tiny_server, {**body, "stream": True, "stop_sequences": [stop]})
    delta = events_of(raw)[-2][1]["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": stop}
    plain = client.messages.create(max_tokens=24, stop_sequences=["never-said"], **ask)
    assert plain.stop_reason in ("end_turn", "max_tokens") and plain.stop_sequence is None


def test_max_tokens_zero_warms_the_cache_for_the_next_request(tiny_server: str) -> None:
    client = api(tiny_server)
    messages = [{"role": "user", "content": "Warm this prompt up for the next turn, please."}]
    warm = client.messages.create(model="tiny", max_tokens=0, messages=messages)
    assert warm.content == [] and warm.stop_reason == "max_tokens"
    assert warm.usage.output_tokens == 0
    prompt = warm.usage.input_tokens + warm.usage.cache_read_input_tokens
    reply = client.messages.create(model="tiny", max_tokens=4, messages=messages, **GREEDY)
    assert reply.usage.cache_read_input_tokens >= prompt - 1
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens == prompt


def test_unknown_model_is_a_not_found_error(tiny_server: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        api(tiny_server).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=ASK)
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "claude-sonnet-4-5" in body["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"stream": "yes"}, "stream"),
        ({"stop_sequences": [1]}, "stop_sequences"),
        ({"system": 7}, "system"),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"metadata": "me"}, "metadata"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"thinking": {"type": "enabled", "budget_tokens": "many"}}, "thinking.budget_tokens"),
        ({"output_config": {"effort": "extreme"}}, "output_config"),
        ({"tools": {"name": "x"}}, "tools"),
        ({"tools": [{"name": "bad name!", "input_schema": {}}]}, "tools[0].name"),
        ({"tools": [{"name": "f", "input_schema": "{}"}]}, "tools[0].input_schema"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]}]},
            "messages[0].content[0].name",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}],
                    }
                ]
            },
            "messages[0].content[0].source.media_type",
        ),
    ],
)
def test_wrong_types_are_invalid_request_errors(
    tiny_server: str, change: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny", "max_tokens": 8, "messages": ASK, **change}
    status, _, raw = post(tiny_server, body)
    error = json.loads(raw)
    assert status == 400 and error["type"] == "error", raw
    assert error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"] and error["request_id"].startswith("req_")


def test_an_image_is_refused_clearly_by_a_model_without_vision(tiny_server: str) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        api(tiny_server).messages.create(model="tiny", max_tokens=8, messages=messages)
    assert "image" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_unknown_routes_under_messages_answer_in_anthropic_shape(tiny_server: str) -> None:
    status, _, raw = raw_post(tiny_server, "/v1/messages/batches", {"requests": []})
    assert status == 404 and json.loads(raw)["error"]["type"] == "not_found_error"
    request = urllib.request.Request(tiny_server + "/v1/messages", method="GET")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("GET /v1/messages answered")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405 and json.loads(exc.read())["type"] == "error"


def test_root_answers_head_and_get_for_claude_codes_probe(tiny_server: str) -> None:
    for method in ("HEAD", "GET"):
        request = urllib.request.Request(tiny_server + "/", method=method)
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200
