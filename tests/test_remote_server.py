"""Remote engines through a real upstream: a second `impetus serve` on loopback serving the tiny
GGUF (llama.cpp, random weights), behind a proxy `impetus serve --remote up=URL`.

The upstream requires its own key, which the proxy reads from the environment; the proxy
requires another (local auth applies to remote models too). Replies through the proxy are
compared with the same requests sent to the upstream directly, at temperature 0.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.remote.config import RemoteConfig
from tests.fixtures.servers import Registry, server_settings, start_server
from tests.test_server_openai import raw_post

pytest.importorskip("llama_cpp")

UPSTREAM_KEY = "upstream-secret-7f3a9c"
LOCAL_KEY = "local-secret-51b2"
KEY_ENV = "IMPETUS_TEST_UPSTREAM_KEY"
ASK = [{"role": "user", "content": "Name three colours."}]
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


def wait_for(check: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true (a bound for a stuck test, not a
    measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def get_json(url: str, path: str, key: str | None = None) -> Any:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    return json.loads(body)


def remote_entry(proxy: str, model_id: str) -> dict[str, Any] | None:
    data = get_json(proxy, "/v1/models", LOCAL_KEY)["data"]
    return next((m for m in data if m["id"] == model_id), None)


@pytest.fixture(scope="module")
def upstream(tiny_gguf: Path) -> Iterator[str]:
    settings = server_settings(api_key=UPSTREAM_KEY)
    manager = ModelManager(settings, store=Registry({"tiny": tiny_gguf}), allow_paths=False)
    with start_server(manager, settings) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(upstream: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, UPSTREAM_KEY)
        remote = RemoteConfig(name="up", url=upstream + "/v1", api_key_env=KEY_ENV, retry_max=1)
        settings = replace(server_settings(api_key=LOCAL_KEY), remote=(remote,))
        manager = ModelManager(settings, store=Registry({}), allow_paths=False)
        with start_server(manager, settings) as url:
            wait_for(lambda: remote_entry(url, "up/tiny"), "the upstream's models")
            yield url


def through(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=LOCAL_KEY, max_retries=0)


def direct(upstream: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream + "/v1", api_key=UPSTREAM_KEY, max_retries=0)


def streamed(client: openai.OpenAI, model: str, **kw: Any) -> tuple[str, Any, str | None]:
    text, usage, finish = "", None, None
    for chunk in client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True}, **kw
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, usage, finish


def test_remote_models_are_listed_as_name_slash_model_with_their_context(
    upstream: str, proxy: str
) -> None:
    entry = remote_entry(proxy, "up/tiny")
    served = next(m for m in get_json(upstream, "/v1/models", UPSTREAM_KEY)["data"])
    assert entry is not None
    assert entry["owned_by"] == "remote:up" and entry["status"] == "up"
    assert entry["context_length"] == served["context_length"] == 2048


def test_a_stream_through_the_proxy_is_the_upstreams_stream(upstream: str, proxy: str) -> None:
    kw: dict[str, Any] = {"messages": ASK, "temperature": 0, "max_tokens": 24, "seed": 7}
    text, usage, finish = streamed(through(proxy), "up/tiny", **kw)
    want, want_usage, want_finish = streamed(direct(upstream), "tiny", **kw)
    assert text == want and text
    assert finish == want_finish
    assert usage.prompt_tokens == want_usage.prompt_tokens > 0
    assert usage.completion_tokens == want_usage.completion_tokens


def test_a_whole_reply_carries_the_upstreams_usage(upstream: str, proxy: str) -> None:
    kw: dict[str, Any] = {"messages": ASK, "temperature": 0, "max_tokens": 12}
    reply = through(proxy).chat.completions.create(model="up/tiny", **kw)
    want = direct(upstream).chat.completions.create(model="tiny", **kw)
    assert reply.model == "up/tiny"
    assert reply.choices[0].message.content == want.choices[0].message.content
    assert reply.usage is not None and want.usage is not None
    assert reply.usage.prompt_tokens == want.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens == want.usage.completion_tokens


def test_a_forced_tool_call_streams_through_as_deltas(proxy: str) -> None:
    stream = through(proxy).chat.completions.create(
        model="up/tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        temperature=0,
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    ids, names, args, finish = [], [], "", None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                ids += [call.id] if call.id else []
                names += [call.function.name] if call.function and call.function.name else []
                args += call.function.arguments or "" if call.function else ""
    assert names == ["get_weather"] and len(ids) == 1
    assert finish == "tool_calls"
    assert isinstance(json.loads(args)["city"], str)


def test_a_tool_result_turn_reaches_the_upstream(proxy: str) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    reply = through(proxy).chat.completions.create(
        model="up/tiny", messages=messages, tools=[WEATHER], temperature=0, max_tokens=8
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage is not None and reply.usage.prompt_tokens > 20


def test_an_upstream_400_passes_through_with_its_message(proxy: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        through(proxy).chat.completions.create(
            model="up/tiny",
            messages=ASK,
            max_tokens=8,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "maxLength": 50000}},
            },
        )
    assert caught.value.status_code == 400
    assert "maxLength" in caught.value.message


def test_a_prompt_over_the_upstreams_context_reads_as_context_length_exceeded(
    proxy: str,
) -> None:
    long = " ".join(["colour"] * 3000)
    with pytest.raises(openai.BadRequestError) as caught:
        through(proxy).chat.completions.create(
            model="up/tiny", messages=[{"role": "user", "content": long}], max_tokens=8
        )
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in caught.value.message


def test_an_unknown_remote_model_is_a_404_listing_what_it_serves(proxy: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        through(proxy).chat.completions.create(model="up/nope", messages=ASK, max_tokens=4)
    assert caught.value.code == "model_not_found"
    assert "up/tiny" in caught.value.message


def test_loading_a_remote_model_by_hand_says_it_loads_on_its_own_server(proxy: str) -> None:
    headers = {"Authorization": f"Bearer {LOCAL_KEY}"}
    for path in ("/impetus/load", "/impetus/unload"):
        status, _, body = raw_post(proxy, path, {"model": "up/tiny"}, headers)
        assert status == 400, body
        assert "runs on a remote engine" in json.loads(body)["error"]["message"]


def test_local_auth_applies_to_remote_models(proxy: str) -> None:
    body = {"model": "up/tiny", "messages": ASK, "max_tokens": 4}
    status, _, _ = raw_post(proxy, "/v1/chat/completions", body)
    assert status == 401
    # The upstream's own key is not a key of the proxy.
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    status, _, _ = raw_post(proxy, "/v1/chat/completions", body, headers)
    assert status == 401


def test_a_client_that_hangs_up_frees_the_upstreams_slot(upstream: str, proxy: str) -> None:
    body = {
        "model": "up/tiny",
        "messages": ASK,
        "max_tokens": 1500,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    conn = http.client.HTTPConnection(proxy.removeprefix("http://"), timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {LOCAL_KEY}"}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    reply = conn.getresponse()
    assert reply.status == 200
    seen = 0
    while seen < 3:  # a few tokens, then hang up
        seen += reply.readline().startswith(b"data: {")
    conn.sock.close()
    conn.close()

    def upstream_idle() -> bool:
        status = get_json(upstream, "/impetus/status", UPSTREAM_KEY)
        return all(m["in_flight"] == 0 for m in status["models"])

    wait_for(upstream_idle, "the upstream's slot to be free")
    last = get_json(upstream, "/impetus/status", UPSTREAM_KEY)["recent_requests"][-1]
    assert last["status"] == "cancelled" and last["completion_tokens"] < 1500
    remotes = get_json(proxy, "/impetus/status", LOCAL_KEY)["remotes"]
    wait_for(
        lambda: get_json(proxy, "/impetus/status", LOCAL_KEY)["remotes"][0]["in_flight"] == 0,
        "the proxy's request to end",
    )
    assert remotes[0]["name"] == "up"
    # The slot serves the next request.
    text, _, _ = streamed(through(proxy), "up/tiny", messages=ASK, max_tokens=4, temperature=0)
    assert text


def test_the_upstream_key_is_never_shown(proxy: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    through(proxy).chat.completions.create(model="up/tiny", messages=ASK, max_tokens=4)
    shown = [
        json.dumps(get_json(proxy, "/v1/models", LOCAL_KEY)),
        json.dumps(get_json(proxy, "/impetus/status", LOCAL_KEY)),
        caplog.text,
    ]
    assert all(UPSTREAM_KEY not in text for text in shown)
    status = get_json(proxy, "/impetus/status", LOCAL_KEY)
    assert status["remotes"][0]["state"] == "up" and "up/tiny" in status["remotes"][0]["models"]


def test_other_dialects_reach_the_remote_model(upstream: str, proxy: str) -> None:
    """Anthropic Messages (Claude Code's shape), Responses and Ollama's chat, translated here
    into the upstream's chat completions."""
    import anthropic
    import ollama

    sdk = anthropic.Anthropic(base_url=proxy, api_key=LOCAL_KEY, max_retries=0)
    with sdk.messages.stream(
        model="up/tiny",
        max_tokens=16,
        system=[
            {
                "type": "text",
                "text": "You are a coding agent.",
                "cache_control": {"type": "ephemeral"},
            }
        ],
        messages=[{"role": "user", "content": [{"type": "text", "text": "List the files."}]}],
        tools=[
            {
                "name": "Bash",
                "description": "Run a command.",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
            }
        ],
    ) as stream:
        message = stream.get_final_message()
    assert message.model == "up/tiny" and message.usage.output_tokens > 0
    assert message.stop_reason in ("end_turn", "max_tokens", "tool_use")

    reply = through(proxy).responses.create(
        model="up/tiny", input="Name a colour.", max_output_tokens=16
    )
    assert reply.status in ("completed", "incomplete") and reply.usage is not None
    assert reply.usage.output_tokens > 0

    chat = ollama.Client(host=proxy, headers={"Authorization": f"Bearer {LOCAL_KEY}"}).chat(
        model="up/tiny", messages=ASK, options={"num_predict": 8, "temperature": 0}
    )
    assert chat.done and chat.eval_count and chat.prompt_eval_count


def test_completions_and_embeddings_through_the_remote(upstream: str, proxy: str) -> None:
    kw: dict[str, Any] = {"prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0}
    got = through(proxy).completions.create(model="up/tiny", **kw)
    want = direct(upstream).completions.create(model="tiny", **kw)
    assert got.choices[0].text == want.choices[0].text
    vectors = through(proxy).embeddings.create(model="up/tiny", input=["a", "b c"])
    expected = direct(upstream).embeddings.create(model="tiny", input=["a", "b c"])
    assert [v.embedding for v in vectors.data] == [v.embedding for v in expected.data]
    assert vectors.usage.prompt_tokens == expected.usage.prompt_tokens


@contextmanager
def serve_at(manager: ModelManager, settings: Any, port: int) -> Iterator[str]:
    """start_server on a chosen port (an upstream that dies and comes back where it was)."""
    from aiohttp import web

    from impetus_cli.server.app import make_app

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def boot() -> web.AppRunner:
        runner = web.AppRunner(make_app(manager, settings), shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(boot(), loop).result(30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_an_upstream_that_dies_is_down_then_up_when_it_returns(tiny_gguf: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = server_settings()
    remote = RemoteConfig("box", f"http://127.0.0.1:{port}/v1", retry_max=0.5)
    proxy_settings = replace(server_settings(), remote=(remote,))
    proxy_manager = ModelManager(proxy_settings, store=Registry({}), allow_paths=False)
    body = {"model": "box/tiny", "messages": ASK, "max_tokens": 4}

    def state() -> str:
        return str(get_json(proxy, "/impetus/status")["remotes"][0]["state"])

    def upstream_manager() -> ModelManager:
        return ModelManager(settings, store=Registry({"tiny": tiny_gguf}), allow_paths=False)

    with start_server(proxy_manager, proxy_settings) as proxy:
        with serve_at(upstream_manager(), settings, port):
            wait_for(lambda: state() == "up", "the upstream to be up")
            assert raw_post(proxy, "/v1/chat/completions", body)[0] == 200
        # Dead: the first request finds it unreachable (502); then it is down: 503 at once.
        status, _, reply = raw_post(proxy, "/v1/chat/completions", body)
        assert status in (502, 503), reply
        status, headers, reply = raw_post(proxy, "/v1/chat/completions", body)
        assert status == 503 and json.loads(reply)["error"]["code"] == "upstream_down"
        assert int(headers["Retry-After"]) >= 1
        entry = next(m for m in get_json(proxy, "/v1/models")["data"] if m["id"] == "box/tiny")
        assert entry["status"] == "down" and state() == "down"
        with serve_at(upstream_manager(), settings, port):
            wait_for(lambda: state() == "up", "the upstream to be up again")
            assert raw_post(proxy, "/v1/chat/completions", body)[0] == 200


def test_count_tokens_of_a_remote_model_is_the_upstreams_count(upstream: str, proxy: str) -> None:
    """Anthropic's count_tokens on a remote model: the upstream counts the translated request,
    and the count equals what the upstream counts for the same Messages request itself (the
    translation loses nothing the prompt is made of)."""
    import anthropic

    kw: dict[str, Any] = {
        "system": "You are a coding agent.",
        "messages": [
            {"role": "user", "content": "List the files."},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "README.md"}],
            },
        ],
        "tools": [
            {
                "name": "Bash",
                "description": "Run a command.",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
            }
        ],
    }
    via = anthropic.Anthropic(base_url=proxy, api_key=LOCAL_KEY, max_retries=0)
    own = anthropic.Anthropic(base_url=upstream, api_key=UPSTREAM_KEY, max_retries=0)
    counted = via.messages.count_tokens(model="up/tiny", **kw).input_tokens
    assert counted == own.messages.count_tokens(model="tiny", **kw).input_tokens > 20
