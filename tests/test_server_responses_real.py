"""`POST /v1/responses` through real engines with the official `openai` SDK: llama.cpp on the
tiny GGUF (random weights: only a grammar makes it write a valid call or JSON, which is what
the tool and format tests check), mlx-lm on the tiny MLX model, the real Gemma 3 270M, and the
recorded Codex turns replayed whole on a tiny GGUF with a context long enough for them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.types import LocalModel
from tests.fixtures.recorded import load_recorded
from tests.fixtures.servers import Registry, server_settings, start_server
from tests.fixtures.tiny_models import write_tiny_gguf
from tests.test_server_responses import events_of

pytest.importorskip("llama_cpp")

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
    },
}
TIME = {
    "type": "function",
    "name": "get_time",
    "description": "The time in a time zone.",
    "parameters": {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
    },
}
ASK = "What is the weather in Paris?"


def api(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-anything", max_retries=0)


def create(url: str, **kw: Any) -> Any:
    kw = {"model": "tiny", "input": ASK, "temperature": 0, "max_output_tokens": 200, **kw}
    return api(url).responses.create(**kw)


def streamed(url: str, **kw: Any) -> tuple[list[Any], Any]:
    kw = {"model": "tiny", "input": ASK, "temperature": 0, "max_output_tokens": 200, **kw}
    # Raw events: the SDK's stream helper has no final response after response.incomplete.
    events = list(api(url).responses.create(stream=True, **kw))
    return events, events[-1].response


def check_text_stream(url: str, model: str) -> None:
    events, final = streamed(url, model=model, max_output_tokens=12)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and final.output_text == deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert final.usage.input_tokens > 0 and 0 < final.usage.output_tokens <= 12


def test_tiny_whole_reply_has_a_message_and_usage(tiny_server: str) -> None:
    reply = create(tiny_server, input="hello there", max_output_tokens=8)
    assert reply.status in ("completed", "incomplete") and reply.output[0].type == "message"
    assert reply.usage.input_tokens > 0 and 0 < reply.usage.output_tokens <= 8
    assert reply.output_text


def test_tiny_stream_deltas_make_the_final_text(tiny_server: str) -> None:
    check_text_stream(tiny_server, "tiny")


def test_reaching_max_output_tokens_is_an_incomplete_response(tiny_server: str) -> None:
    events, final = streamed(tiny_server, input="hello there", max_output_tokens=3)
    assert events[-1].type == "response.incomplete" and final.status == "incomplete"
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 3


def test_a_named_tool_choice_makes_the_model_call_that_tool(tiny_server: str) -> None:
    reply = create(
        tiny_server, tools=[WEATHER, TIME], tool_choice={"type": "function", "name": "get_time"}
    )
    calls = [item for item in reply.output if item.type == "function_call"]
    assert calls and {c.name for c in calls} == {"get_time"}
    assert json.loads(calls[0].arguments)["zone"] in ("UTC", "CET")
    assert calls[0].call_id and calls[0].status == "completed"


def test_required_streams_one_valid_call(tiny_server: str) -> None:
    events, final = streamed(
        tiny_server, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and isinstance(json.loads(done[0].arguments)["city"], str)
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == done[0].arguments
    assert kinds[-1] == "response.completed"


def test_the_output_turn_continues_the_stored_conversation_from_the_cache(
    tiny_server: str,
) -> None:
    first = create(tiny_server, tools=[WEATHER], tool_choice="required")
    call = next(item for item in first.output if item.type == "function_call")
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    second = create(
        tiny_server,
        previous_response_id=first.id,
        input=[output],
        tools=[WEATHER],
        max_output_tokens=8,
    )
    assert second.status in ("completed", "incomplete")
    assert second.usage.input_tokens > first.usage.input_tokens
    # The first turn's prompt is still in the KV cache: only the new items are evaluated.
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 1


def test_a_json_schema_text_format_is_followed(tiny_server: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    fmt = {"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}}
    reply = create(tiny_server, text=fmt)
    value = json.loads(reply.output_text)
    assert set(value) == {"city", "sunny"} and isinstance(value["sunny"], bool)
    assert reply.text.format.type == "json_schema"


@pytest.fixture(scope="module")
def mlx_server(tiny_mlx_dir: Path) -> Iterator[str]:
    settings = replace(server_settings(), ctx=1024)
    registry = Registry({})
    size = sum(p.stat().st_size for p in tiny_mlx_dir.iterdir())
    registry.models = [LocalModel("tiny-mlx", "mlx", tiny_mlx_dir, "impetus", size)]
    manager = ModelManager(settings, store=registry, allow_paths=False)
    with start_server(manager, settings) as url:
        yield url


def test_tiny_mlx_answers_whole_and_streamed(mlx_server: str) -> None:
    reply = create(mlx_server, model="tiny-mlx", input="hello", max_output_tokens=6)
    assert reply.output[0].type == "message" and reply.usage.output_tokens <= 6
    check_text_stream(mlx_server, "tiny-mlx")


@pytest.mark.slow
@pytest.mark.timeout(900)  # a grammar over Gemma's 262k-token vocabulary is slow on busy cores
def test_gemma_answers_whole_streamed_and_with_a_forced_tool(tiny_server: str) -> None:
    reply = create(tiny_server, model="gemma3:270m", input="The capital of France is",
                   max_output_tokens=8)  # fmt: skip
    assert reply.output_text.strip() and reply.model == "gemma3:270m"
    check_text_stream(tiny_server, "gemma3:270m")
    # One call: a base model given room for several keeps calling until max_output_tokens.
    events, final = streamed(
        tiny_server,
        model="gemma3:270m",
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    assert events[-1].type == "response.completed"
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)


@pytest.fixture(scope="module")
def agent_sized_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny GGUF declaring a 40k context, as `gemma3:270m`: Codex's first turn is about 32k
    of its tokens. Replies are capped by the server's default (Codex sends no limit)."""
    path = write_tiny_gguf(tmp_path_factory.mktemp("long") / "tiny.gguf", context_length=40960)
    settings = replace(server_settings(), ctx=40960, max_tokens=16)
    manager = ModelManager(settings, store=Registry({"gemma3:270m": path}), allow_paths=False)
    with start_server(manager, settings) as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~32k prompt tokens on two shared cores: minutes when they are busy
async def test_recorded_codex_turns_replayed_on_a_real_engine(agent_sized_server: str) -> None:
    """Codex's two turns exactly as it sent them (only the model's name and key swapped): each
    is answered with the events Codex reads, and the follow-up reuses the first turn's cache."""
    import aiohttp

    turns = [r for r in load_recorded("codex") if r.path == "/v1/responses"]
    usages = []
    async with aiohttp.ClientSession() as session:
        for turn in turns:
            async with session.request(**turn.replay(agent_sized_server, api_key="sk-x")) as reply:
                assert reply.status == 200, await reply.text()
                events = events_of(await reply.read())
            assert events[0]["type"] == "response.created"
            assert events[-1]["type"] in ("response.completed", "response.incomplete")
            usages.append(events[-1]["response"]["usage"])
    first, second = usages
    assert first["input_tokens"] > 20_000
    assert second["input_tokens_details"]["cached_tokens"] >= first["input_tokens"] - 1
