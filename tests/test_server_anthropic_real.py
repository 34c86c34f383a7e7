"""`/v1/messages` through real engines with the official `anthropic` SDK: the real Gemma 3
270M, mlx-lm on the tiny MLX model, and the recorded Claude Code requests replayed whole: on a
2048-token context (each is the 400 Claude Code compacts on), and on a tiny GGUF with room for
them, where the second turn evaluates only its new tokens."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import pytest

from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.types import LocalModel
from tests.fixtures.recorded import RecordedRequest, load_recorded
from tests.fixtures.servers import Registry, server_settings, start_server
from tests.fixtures.tiny_models import write_tiny_gguf
from tests.test_server_anthropic import TOO_LONG, WEATHER, api, check_blocks, events_of

pytest.importorskip("llama_cpp")

CLAUDE_CODE = ("claude-code", "claude-code-sonnet")
KEY = "sk-recorded"


async def send(request: RecordedRequest, url: str, **kw: Any) -> tuple[int, bytes]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.request(**request.replay(url, **kw)) as reply,
    ):
        return reply.status, await reply.read()


@pytest.mark.parametrize("client", CLAUDE_CODE)
async def test_recorded_claude_code_requests_on_a_short_context_are_prompt_too_long(
    tiny_server: str, client: str
) -> None:
    """Every request as Claude Code sent it (streamed, then the retry without streaming it
    makes after a failure): its whole prompt is read and counted, and the answer is the 400
    whose two numbers Claude Code reads to compact the conversation."""
    for request in load_recorded(client):
        if request.method == "HEAD":
            assert (await send(request, tiny_server))[0] == 200
            continue
        count = replace(request, path="/v1/messages/count_tokens", query={})
        status, raw = await send(count, tiny_server, model="tiny")
        assert status == 200, raw
        counted = json.loads(raw)["input_tokens"]
        retry = replace(request, body={**request.body, "stream": False})
        for attempt in (request, retry):
            status, raw = await send(attempt, tiny_server, model="tiny")
            error = json.loads(raw)
            match = TOO_LONG.match(error["error"]["message"])
            assert status == 400 and error["error"]["type"] == "invalid_request_error", raw
            assert match and int(match.group(1)) == counted
            assert int(match.group(2)) == 2048


@pytest.fixture(scope="module")
def claude_sized_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny GGUF (one layer, 16 wide: cheap per token) declaring a context with room for
    Claude Code's recorded conversation, which is about 65k of its tokens, behind a key."""
    folder = tmp_path_factory.mktemp("claude-sized")
    path = write_tiny_gguf(
        folder / "tiny.gguf", n_layers=1, n_embd=16, n_head=1, n_kv=1, context_length=67584
    )
    settings = replace(server_settings(), ctx=67584, api_key=KEY)
    manager = ModelManager(settings, store=Registry({"tiny-long": path}), allow_paths=False)
    with start_server(manager, settings) as url:
        yield url


def billed(request: RecordedRequest, cch: str) -> RecordedRequest:
    """The request as Claude Code sends it each time: its billing line changes with every
    request (the recorded pair happens to share one). The reply is kept short, since a
    random-weight model's words do not matter here."""
    body = copy.deepcopy(request.body)
    assert body["system"][0]["text"].startswith("x-anthropic-billing-header:")
    body["system"][0]["text"] = (
        f"x-anthropic-billing-header: cc_version=2.1.197.6e2; cc_entrypoint=sdk-cli; cch={cch};"
    )
    body["max_tokens"] = 16
    return replace(request, body=body)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~65k prompt tokens on two shared cores: minutes when they are busy
async def test_claude_codes_second_turn_evaluates_only_its_new_tokens(
    claude_sized_server: str,
) -> None:
    turns = [r for r in load_recorded("claude-code") if r.path == "/v1/messages"]
    usages = []
    for turn, cch in zip(turns, ("5e0f1", "a93c7"), strict=True):
        status, raw = await send(
            billed(turn, cch), claude_sized_server, model="tiny-long", api_key=KEY
        )
        assert status == 200, raw[:2000]
        events = events_of(raw)
        assert check_blocks(events) is not None
        usages.append(events[-2][1]["usage"])
    first, second = usages
    before = first["input_tokens"] + first["cache_read_input_tokens"]
    now = second["input_tokens"] + second["cache_read_input_tokens"]
    assert before > 20_000 and now > before
    # All of the first turn's prompt comes from the cache; only the call and its result
    # (the tokens the second turn adds) are evaluated.
    assert second["cache_read_input_tokens"] >= before
    assert second["input_tokens"] == now - second["cache_read_input_tokens"] <= now - before


@pytest.mark.slow
def test_gemma_answers_whole_and_streamed(tiny_server: str) -> None:
    client = api(tiny_server)
    ask: dict[str, Any] = {
        "model": "gemma3:270m",
        "max_tokens": 8,
        "system": "You complete sentences.",
        "messages": [{"role": "user", "content": "The capital of France is"}],
        "extra_body": {"temperature": 0},
    }
    reply = client.messages.create(**ask)
    assert reply.model == "gemma3:270m" and reply.content[0].type == "text"
    assert reply.content[0].text.strip() and reply.usage.output_tokens <= 8
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == (
        reply.usage.input_tokens + reply.usage.cache_read_input_tokens
    )


@pytest.mark.slow
def test_gemma_calls_a_forced_tool(tiny_server: str) -> None:
    reply = api(tiny_server).messages.create(
        model="gemma3:270m",
        max_tokens=100,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        extra_body={"temperature": 0},
    )
    (call,) = [b for b in reply.content if b.type == "tool_use"]  # one call, as asked
    assert reply.stop_reason == "tool_use" and call.name == "get_weather"
    assert isinstance(call.input, dict) and isinstance(call.input["city"], str)


@pytest.fixture(scope="module")
def mlx_server(tiny_mlx_dir: Path) -> Iterator[str]:
    pytest.importorskip("mlx_lm")
    settings = replace(server_settings(), ctx=1024)
    registry = Registry({})
    size = sum(p.stat().st_size for p in tiny_mlx_dir.iterdir())
    registry.models = [LocalModel("tiny-mlx", "mlx", tiny_mlx_dir, "impetus", size)]
    manager = ModelManager(settings, store=registry, allow_paths=False)
    with start_server(manager, settings) as url:
        yield url


def test_tiny_mlx_answers_whole_and_streamed(mlx_server: str) -> None:
    client = api(mlx_server)
    ask: dict[str, Any] = {
        "model": "tiny-mlx",
        "max_tokens": 6,
        "messages": [{"role": "user", "content": "hello"}],
    }
    reply = client.messages.create(**ask)
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.usage.output_tokens <= 6
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens > 0
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == text
    counted = client.messages.count_tokens(model="tiny-mlx", messages=ask["messages"])
    assert counted.input_tokens == final.usage.input_tokens + final.usage.cache_read_input_tokens


def test_tiny_mlx_refuses_a_forced_tool_clearly(mlx_server: str) -> None:
    """MLX samples without grammars, so a forced tool cannot be enforced there: a 400 in
    Anthropic's shape that says so, not a reply that ignores the choice."""
    with pytest.raises(anthropic.BadRequestError) as caught:
        api(mlx_server).messages.create(
            model="tiny-mlx",
            max_tokens=50,
            messages=[{"role": "user", "content": "weather?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "any"},
        )
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "MLX" in error["message"]


@pytest.mark.slow
def test_gemma_second_session_reads_the_system_prompt_the_first_one_saved(
    tiny_server: str,
) -> None:
    """Two sessions of one agent with the same system prompt, on Gemma (whose sliding window
    keeps no shared prefix in place): the first saves its state where the system prompt ends
    while evaluating it, and the second reads the system prompt from there and evaluates only
    its own turn."""
    client = api(tiny_server)
    rules = " ".join(f"Rule {i}: read the file before you edit it." for i in range(40))
    system = f"Session {uuid.uuid4().hex[:8]}. {rules}"

    def session(task: str) -> Any:
        return client.messages.create(
            model="gemma3:270m",
            max_tokens=2,
            system=system,
            messages=[{"role": "user", "content": task}],
            extra_body={"temperature": 0},
        ).usage

    first = session("Task one. " + "The parser drops the last line of a file. " * 80)
    second = session("Task two: why does test_io fail?")
    assert first.cache_read_input_tokens < 16 and first.input_tokens > 1000
    assert second.cache_read_input_tokens >= 400  # the system prompt, loaded
    assert second.input_tokens < 32  # its own turn
