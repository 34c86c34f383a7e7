"""The Responses renderer and store as pure objects: chunks in, events and Response objects
out (the wire through a real server is in test_server_responses.py)."""

from __future__ import annotations

import json
from typing import Any

from impetus_cli.errors import EngineError
from impetus_cli.runtime.summary import StreamSummary
from impetus_cli.runtime.types import GenerationChunk, ToolCall, ToolCallDelta
from impetus_cli.server.protocols.responses_items import decode_reasoning
from impetus_cli.server.protocols.responses_parse import responses_request
from impetus_cli.server.protocols.responses_render import ResponsesRenderer
from impetus_cli.server.protocols.responses_store import ResponseStore

TOOLS = [
    {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
        {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch."},
    {"type": "web_search"},
]  # fmt: skip
PATCH_ARGS = json.dumps({"input": "*** Begin Patch\n*** End Patch"})


def renderer(**body: Any) -> tuple[ResponsesRenderer, list[dict[str, Any]]]:
    kept: list[dict[str, Any]] = []
    call = responses_request({"model": "m", "input": "hi", "tools": TOOLS, **body})
    return ResponsesRenderer(call, "m", 10, kept.append), kept


def decode(raw: list[bytes]) -> list[dict[str, Any]]:
    events = []
    for block in raw:
        head, data, end = block.decode().split("\n", 2)
        assert head.startswith("event: ") and data.startswith("data: ") and end == "\n"
        event = json.loads(data[len("data: ") :])
        assert event["type"] == head[len("event: ") :]
        events.append(event)
    return events


def run(r: ResponsesRenderer, chunks: list[GenerationChunk]) -> list[dict[str, Any]]:
    summary = StreamSummary()
    raw = r.start()
    for chunk in chunks:
        summary.add(chunk)
        raw += r.chunk(chunk)
    return decode(raw + r.end(summary))


def whole(r: ResponsesRenderer, chunks: list[GenerationChunk]) -> dict[str, Any]:
    summary = StreamSummary(keep_chunks=r.keep_chunks)
    for chunk in chunks:
        summary.add(chunk)
    return r.body(summary)


def final(reason: str, **kw: Any) -> GenerationChunk:
    return GenerationChunk(finish_reason=reason, prompt_tokens=10, completion_tokens=7, **kw)  # type: ignore[arg-type]


THINK_SAY_CALL = [
    GenerationChunk(reasoning="Let me ", token_ids=(1, 2)),
    GenerationChunk(reasoning="see.", token_ids=(3,)),
    GenerationChunk(text="Spawning.", token_ids=(4,)),
    GenerationChunk(
        tool_call_deltas=(ToolCallDelta(0, "call_a", "multi_agent_v1__spawn_agent"),),
        token_ids=(5,),
    ),
    GenerationChunk(tool_call_deltas=(ToolCallDelta(0, arguments='{"task": "x"'),)),
    GenerationChunk(
        tool_call_deltas=(ToolCallDelta(0, arguments="}"),),
        tool_calls=(ToolCall("call_a", "multi_agent_v1__spawn_agent", '{"task": "x"}'),),
    ),
    final("tool_calls", cached_tokens=4),
]


def test_reasoning_text_and_a_namespaced_call_stream_as_the_full_event_sequence() -> None:
    r, kept = renderer(include=["reasoning.encrypted_content"])
    events = run(r, THINK_SAY_CALL)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["output_index"] for e in done] == [0, 1, 2]
    reasoning, message, call = (e["item"] for e in done)
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me see."}]
    assert decode_reasoning(reasoning["encrypted_content"]) == "Let me see."
    assert message["content"][0]["text"] == "Spawning." and message["status"] == "completed"
    assert (call["name"], call["namespace"], call["call_id"]) == (
        "spawn_agent",
        "multi_agent_v1",
        "call_a",
    )
    assert call["arguments"] == '{"task": "x"}'
    response = events[-1]["response"]
    assert response["status"] == "completed" and response["output"] == [reasoning, message, call]
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 17,
    }
    assert kept == [response]


def test_a_whole_reply_carries_the_same_items_as_the_stream() -> None:
    streamed = run(renderer()[0], THINK_SAY_CALL)[-1]["response"]
    body = whole(renderer()[0], THINK_SAY_CALL)
    strip = lambda items: [{k: v for k, v in i.items() if k != "id"} for i in items]  # noqa: E731
    assert strip(body["output"]) == strip(streamed["output"])
    assert "encrypted_content" not in body["output"][0]  # only when include asks for it
    assert body["object"] == "response" and body["status"] == "completed"


def test_a_custom_tool_call_goes_back_as_its_text() -> None:
    chunks = [
        GenerationChunk(tool_call_deltas=(ToolCallDelta(0, "call_p", "apply_patch"),)),
        GenerationChunk(
            tool_call_deltas=(ToolCallDelta(0, arguments=PATCH_ARGS),),
            tool_calls=(ToolCall("call_p", "apply_patch", PATCH_ARGS),),
        ),
        final("tool_calls"),
    ]
    events = run(renderer()[0], chunks)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" not in kinds
    done = next(e for e in events if e["type"] == "response.custom_tool_call_input.done")
    assert done["input"] == "*** Begin Patch\n*** End Patch"
    item = events[-1]["response"]["output"][0]
    assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch"
    assert item["input"] == "*** Begin Patch\n*** End Patch" and item["call_id"] == "call_p"


def test_a_reply_cut_at_max_output_tokens_is_incomplete_and_so_is_its_open_call() -> None:
    chunks = [
        GenerationChunk(text="Reading"),
        GenerationChunk(tool_call_deltas=(ToolCallDelta(0, "call_x", "unknown_tool"),)),
        final("length"),
    ]
    events = run(renderer()[0], chunks)
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["status"] for i in response["output"]] == ["completed", "incomplete"]


def test_a_failure_mid_stream_is_response_failed_and_is_kept() -> None:
    r, kept = renderer()
    raw = r.start() + r.chunk(GenerationChunk(text="par"))
    events = decode(raw + r.error(EngineError("the backend crashed")))
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["sequence_number"] == len(events) - 1
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "engine_error", "message": "the backend crashed"}
    assert kept == [failed["response"]]


def test_heartbeat_is_another_in_progress_event() -> None:
    r, _ = renderer()
    events = decode(r.start() + r.heartbeat())
    assert [e["type"] for e in events] == ["response.created"] + ["response.in_progress"] * 2
    assert events[-1]["response"]["id"] == events[0]["response"]["id"]


def test_store_keeps_conversations_and_forgets_least_recently_used_first() -> None:
    store = ResponseStore(max_responses=3, max_bytes=10_000)
    for i in range(3):
        previous = f"resp_{i - 1}" if i else None
        store.put({"id": f"resp_{i}", "output": [{"id": f"o{i}"}]}, [{"id": f"i{i}"}], previous)
    conversation = store.conversation("resp_2")
    assert conversation is not None and [item["id"] for item in conversation] == [
        "i0", "o0", "i1", "o1", "i2", "o2",
    ]  # fmt: skip
    assert store.get("resp_0") is not None  # now the most recently used
    store.put({"id": "resp_x", "output": []}, [], None)
    assert store.get("resp_1") is None and len(store) == 3
    assert store.conversation("resp_2") is None  # a forgotten turn: no conversation with a hole
    assert store.find_item("o0") == {"id": "o0"} and store.find_item("o1") is None
    assert store.delete("resp_x") and not store.delete("resp_x")


def test_store_is_bounded_by_bytes() -> None:
    store = ResponseStore(max_responses=100, max_bytes=2_000)
    big = [{"text": "x" * 600}]
    for i in range(5):
        assert store.put({"id": f"r{i}", "output": []}, big, None)
    assert store.bytes <= 2_000 and len(store) == 3
    assert store.get("r4") is not None and store.get("r1") is None
    assert not store.put({"id": "huge", "output": []}, [{"text": "y" * 5_000}], None)
    assert store.get("huge") is None and store.bytes <= 2_000


def test_reasoning_is_also_the_summary_when_the_client_asks_for_one() -> None:
    """Codex sends reasoning.summary "auto" and shows only summaries."""
    events = run(renderer(reasoning={"summary": "auto"})[0], THINK_SAY_CALL)
    kinds = [e["type"] for e in events]
    first, last = (
        kinds.index("response.output_item.added"),
        kinds.index("response.output_item.done"),
    )
    assert kinds[first:last] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.done",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.content_part.done",
    ]
    item = events[last]["item"]
    assert item["summary"] == [{"type": "summary_text", "text": "Let me see."}]
    assert item["content"] == [{"type": "reasoning_text", "text": "Let me see."}]
    replayed = responses_request(
        {"model": "m", "input": [{"role": "user", "content": "q"}, item]}
    ).chat.messages[1]
    assert replayed.reasoning == "Let me see."  # once, not once per copy


def test_whitespace_between_calls_makes_no_message_item() -> None:
    def call(i: int) -> GenerationChunk:
        cid, name, args = f"call_{i}", "multi_agent_v1__spawn_agent", "{}"
        return GenerationChunk(
            tool_call_deltas=(ToolCallDelta(i, cid, name), ToolCallDelta(i, arguments=args)),
            tool_calls=(ToolCall(cid, name, args),),
        )

    chunks = [call(0), GenerationChunk(text="\n\n"), call(1), GenerationChunk(text="\n")]
    events = run(renderer()[0], [*chunks, final("tool_calls")])
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["function_call", "function_call"]
    assert "response.output_text.delta" not in [e["type"] for e in events]
    spaced = [GenerationChunk(text="\n"), GenerationChunk(text="Hi"), GenerationChunk(text=" ")]
    body = whole(renderer()[0], [*spaced, final("stop")])
    assert [item["content"][0]["text"] for item in body["output"]] == ["\nHi "]
