"""Remote engines against a scripted upstream: a real aiohttp server on loopback that answers
as vLLM does (or fails as servers fail) depending on the model asked, and records every
request it gets. For error paths and exact wire shapes; the real upstream (a second impetus
serve on the tiny GGUF) is in test_remote_server.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.remote.config import RemoteConfig
from tests.fixtures.cli import run_cli
from tests.fixtures.fake_engine import FakeEngine, fake_info, fake_model
from tests.fixtures.recorded import load_recorded
from tests.fixtures.servers import Registry, server_settings, start_server
from tests.test_remote_server import get_json, wait_for
from tests.test_server_openai import raw_post

KEY = "scripted-upstream-key-93af"
LOCAL = "local-key-2c1d"
KEY_ENV = "IMPETUS_TEST_SCRIPTED_KEY"
ASK = [{"role": "user", "content": "Hi"}]
MODELS = ["echo", "tools", "slow", "stall", "garbage", "crash", "busy", "cut", "maxtok", "whole"]


def sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "choices": [choice]}


USAGE = {
    "id": "chatcmpl-x",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 6,
        "total_tokens": 126,
        "prompt_tokens_details": {"cached_tokens": 100},
    },
}
TOOL_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "The user wants "}),
    chunk({"reasoning_content": "the weather."}),
    chunk({"content": "Checking."}),
    chunk({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"),
    USAGE,
]  # fmt: skip


class Scripted:
    """The upstream: answers by model, records (path, headers, body) of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        self.gate: asyncio.Event | None = None
        self.models_status = 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def models(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers), None))
        data = [{"id": m, "object": "model", "max_model_len": 8192} for m in MODELS]
        return web.json_response({"object": "list", "data": data}, status=self.models_status)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, dict(request.headers), body))
        model = body["model"]
        if model in ("crash", "busy"):
            return self.failure(model)
        if model == "maxtok" and "max_tokens" in body:
            message = (
                f"'max_tokens' or 'max_completion_tokens' is too large: {body['max_tokens']}. "
                "This model's maximum context length is 8192 tokens and your request has 100 "
                f"input tokens ({body['max_tokens']} > 8192 - 100)."
            )
            error = {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
            return web.json_response(error, status=400)
        if model == "whole":
            return web.json_response(whole_reply())
        if model == "slow":
            assert self.gate is not None
            await self.gate.wait()
        return await self.stream(request, model)

    def failure(self, model: str) -> web.Response:
        if model == "crash":
            return web.Response(status=500, text="Internal Server Error: boom")
        error = {"error": {"message": "queue full", "type": "server_error", "code": "overloaded"}}
        return web.json_response(error, status=503, headers={"Retry-After": "7"})

    async def stream(self, request: web.Request, model: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if model == "garbage":
            await response.write(b"data: <html>Bad gateway</html>\n\n")
            return response
        events = (
            TOOL_STREAM
            if model == "tools"
            else [chunk({"content": "hel"}), chunk({"content": "lo"})]
        )
        for event in events[:2] if model in ("stall", "cut") else events:
            await response.write(sse(event))
        if model == "stall":
            assert self.gate is not None
            await self.gate.wait()
        if model == "cut":
            assert request.transport is not None
            request.transport.close()
            return response
        if model != "tools":
            await response.write(sse(chunk({}, "stop")) + sse(USAGE))
        await response.write(sse("[DONE]"))
        await response.write_eof()
        return response


def whole_reply() -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    message = {"role": "assistant", "content": "Sure.", "tool_calls": [call]}
    return {
        "id": "chatcmpl-w",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39},
    }


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, str, asyncio.AbstractEventLoop]]:
    upstream = Scripted()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def boot() -> tuple[web.AppRunner, int]:
        upstream.gate = asyncio.Event()
        runner = web.AppRunner(upstream.app(), shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    runner, port = asyncio.run_coroutine_threadsafe(boot(), loop).result(30)
    yield upstream, f"http://127.0.0.1:{port}", loop
    loop.call_soon_threadsafe(upstream.gate.set)  # type: ignore[union-attr]
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy(scripted: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, url, _ = scripted
    FakeEngine.reset()
    model = fake_model(tmp_path_factory.mktemp("fake"), "fake")
    remotes = (
        RemoteConfig("s", f"{url}/v1", api_key_env=KEY_ENV, timeout=2.0, retry_max=1.0),
        RemoteConfig("patient", f"{url}/v1", api_key_env=KEY_ENV, timeout=120.0),
        RemoteConfig("dead", f"http://127.0.0.1:{free_port()}/v1", retry_max=30.0),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        settings = replace(server_settings(api_key=LOCAL), remote=remotes)
        manager = ModelManager(
            settings,
            store=Registry({"fake": model.path}),
            engine_factory=FakeEngine.factory,
            memory_probe=lambda: 100_000_000_000,
            allow_paths=False,
        )
        manager.models.info = lambda m: fake_info(m.path)  # type: ignore[method-assign]
        with start_server(manager, settings) as proxy_url:
            wait_for(lambda: len(listed(proxy_url)) == 2 * len(MODELS), "the upstream's models")
            yield proxy_url


def listed(proxy: str) -> list[dict[str, Any]]:
    data = get_json(proxy, "/v1/models", LOCAL)["data"]
    return [m for m in data if m["owned_by"].startswith("remote:")]


def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=LOCAL, max_retries=0)


def post(proxy: str, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    return raw_post(proxy, path, body, {"Authorization": f"Bearer {LOCAL}"})


def last_body(scripted: Any) -> Any:
    return [b for path, _, b in scripted[0].seen if path == "/v1/chat/completions"][-1]


def test_reasoning_tool_calls_and_cached_usage_reach_the_client(proxy: str) -> None:
    text, reasoning, args, finish, usage = "", "", "", None, None
    for c in client(proxy).chat.completions.create(
        model="s/tools", messages=ASK, stream=True, stream_options={"include_usage": True}
    ):
        usage = c.usage or usage
        for choice in c.choices:
            delta = choice.delta
            text += delta.content or ""
            reasoning += getattr(delta, "reasoning_content", None) or ""
            args += "".join(
                (t.function.arguments or "") for t in delta.tool_calls or [] if t.function
            )
            finish = choice.finish_reason or finish
    assert (text, reasoning) == ("Checking.", "The user wants the weather.")
    assert json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (120, 6)
    assert usage.prompt_tokens_details.cached_tokens == 100  # type: ignore[union-attr]
    whole = client(proxy).chat.completions.create(model="s/tools", messages=ASK)
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name) == ("chatcmpl-tool-1", "get_weather")  # type: ignore[union-attr]


def test_the_upstream_gets_its_key_and_never_the_clients(scripted: Any, proxy: str) -> None:
    headers = {"Authorization": f"Bearer {LOCAL}", "x-api-key": LOCAL}
    status, _, _ = raw_post(
        proxy, "/v1/chat/completions", {"model": "s/echo", "messages": ASK}, headers
    )
    assert status == 200
    sent = [h for path, h, _ in scripted[0].seen]
    assert all(h.get("Authorization") == f"Bearer {KEY}" for h in sent)
    assert all(LOCAL not in json.dumps(h) for h in sent)


def test_the_upstream_key_is_nowhere_a_client_or_a_log_can_see(
    scripted: Any, proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    bodies = [
        post(proxy, "/v1/chat/completions", {"model": "s/crash", "messages": ASK})[2],
        post(proxy, "/v1/chat/completions", {"model": "dead/x", "messages": ASK})[2],
        json.dumps(get_json(proxy, "/v1/models", LOCAL)).encode(),
        json.dumps(get_json(proxy, "/impetus/status", LOCAL)).encode(),
        json.dumps(get_json(proxy, "/api/tags", LOCAL)).encode(),
    ]
    assert all(KEY.encode() not in b for b in bodies) and KEY not in caplog.text


def test_remote_models_carry_their_context_and_state(proxy: str) -> None:
    by_id = {m["id"]: m for m in listed(proxy)}
    assert by_id["s/echo"]["context_length"] == 8192 and by_id["s/echo"]["status"] == "up"
    status = get_json(proxy, "/impetus/status", LOCAL)
    dead = next(r for r in status["remotes"] if r["name"] == "dead")
    assert dead["state"] == "down" and dead["last_error"] and dead["models"] == []
    tags = [m["name"] for m in get_json(proxy, "/api/tags", LOCAL)["models"]]
    assert "s/echo" in tags and "fake" in tags


def test_a_down_upstream_answers_503_with_retry_after_in_every_dialect(proxy: str) -> None:
    status, headers, body = post(
        proxy, "/v1/chat/completions", {"model": "dead/x", "messages": ASK}
    )
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert json.loads(body)["error"]["code"] == "upstream_down"
    anthropic_body = {"model": "dead/x", "max_tokens": 8, "messages": ASK}
    status, headers, body = post(proxy, "/v1/messages", anthropic_body)
    assert status == 529 and json.loads(body)["error"]["type"] == "overloaded_error"
    status, _, body = post(proxy, "/api/chat", {"model": "dead/x", "messages": ASK})
    assert status == 503 and "down" in json.loads(body)["error"]


def test_upstream_failures_become_502_503_and_504(proxy: str) -> None:
    status, _, body = post(proxy, "/v1/chat/completions", {"model": "s/crash", "messages": ASK})
    error = json.loads(body)["error"]
    assert status == 502 and error["code"] == "upstream_error" and "boom" in error["message"]
    status, headers, body = post(
        proxy, "/v1/chat/completions", {"model": "s/busy", "messages": ASK}
    )
    assert status == 503 and headers["Retry-After"] == "7"
    status, _, body = post(proxy, "/v1/chat/completions", {"model": "s/slow", "messages": ASK})
    assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"
    status, _, body = post(proxy, "/v1/chat/completions", {"model": "s/garbage", "messages": ASK})
    assert status == 502 and "not JSON" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize(
    ("model", "says"),
    [("s/garbage", "not JSON"), ("s/cut", "ended"), ("s/stall", "stopped sending")],
)
def test_a_stream_that_breaks_ends_with_an_error_event(proxy: str, model: str, says: str) -> None:
    status, _, raw = post(
        proxy, "/v1/chat/completions", {"model": model, "messages": ASK, "stream": True}
    )
    events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and "[DONE]" not in events
    assert says in json.loads(events[-1])["error"]["message"]


def test_max_tokens_the_upstream_refuses_is_sent_again_without_it(
    scripted: Any, proxy: str
) -> None:
    reply = client(proxy).chat.completions.create(model="s/maxtok", messages=ASK, max_tokens=32000)
    assert reply.choices[0].message.content == "hello"
    first, second = [b for p, _, b in scripted[0].seen if p == "/v1/chat/completions"][-2:]
    assert first["max_tokens"] == 32000 and "max_tokens" not in second


def test_an_upstream_that_does_not_stream_is_streamed_here(proxy: str) -> None:
    names = []
    for c in client(proxy).chat.completions.create(model="s/whole", messages=ASK, stream=True):
        names += [
            t.function.name
            for ch in c.choices
            for t in ch.delta.tool_calls or []
            if t.function and t.function.name
        ]
    assert names == ["f"]


def test_a_slow_upstream_stalls_neither_local_models_nor_other_requests(
    scripted: Any, proxy: str
) -> None:
    upstream, _, loop = scripted
    loop.call_soon_threadsafe(upstream.gate.clear)
    result: dict[str, Any] = {}

    def slow() -> None:
        result["reply"] = client(proxy).chat.completions.create(model="patient/slow", messages=ASK)

    thread = threading.Thread(target=slow)
    thread.start()
    wait_for(
        lambda: any(b and b["model"] == "slow" for _, _, b in upstream.seen[-3:]),
        "the slow request",
    )
    local = client(proxy).chat.completions.create(model="fake", messages=ASK)
    remote = client(proxy).chat.completions.create(model="s/echo", messages=ASK)
    assert local.choices[0].message.content == "ok"
    assert remote.choices[0].message.content == "hello"
    assert len(listed(proxy)) == 2 * len(MODELS)
    patient = next(
        r for r in get_json(proxy, "/impetus/status", LOCAL)["remotes"] if r["name"] == "patient"
    )
    assert patient["in_flight"] == 1 and thread.is_alive()
    loop.call_soon_threadsafe(upstream.gate.set)
    thread.join(60)
    assert result["reply"].choices[0].message.content == "hello"


def test_claude_codes_recorded_turns_reach_a_chat_completions_upstream(
    scripted: Any, proxy: str
) -> None:
    """Claude Code through /v1/messages onto a server that speaks only chat completions:
    the recorded first turn and its tool-result follow-up, replayed on the proxy."""
    turns = [r for r in load_recorded("claude-code") if r.path == "/v1/messages"]

    async def replay() -> list[tuple[int, str]]:
        out = []
        async with aiohttp.ClientSession() as session:
            for turn in turns:
                kwargs = turn.with_model("s/tools").replay(proxy, api_key=LOCAL)
                async with session.request(**kwargs) as reply:
                    out.append((reply.status, await reply.text()))
        return out

    answers = asyncio.run(replay())
    sent = [b for p, _, b in scripted[0].seen if p == "/v1/chat/completions"][-len(turns) :]
    for (status, text), body, turn in zip(answers, sent, turns, strict=True):
        assert status == 200 and "event: message_stop" in text
        assert '"name":"get_weather"' in text.replace(" ", "")
        assert body["model"] == "tools" and body["stream"] is True
        assert body["messages"][0]["role"] == "system"
        assert len(body["tools"]) == len(turn.body["tools"])
        assert all(t["type"] == "function" and "parameters" in t["function"] for t in body["tools"])
        assert body["max_tokens"] == turn.body["max_tokens"]
    follow_up = sent[-1]["messages"]
    assert any(m["role"] == "tool" and m.get("tool_call_id") for m in follow_up)
    assert any(m["role"] == "assistant" and m.get("tool_calls") for m in follow_up)


def test_codex_recorded_turns_reach_a_chat_completions_upstream(scripted: Any, proxy: str) -> None:
    turns = [r for r in load_recorded("codex") if r.path == "/v1/responses"]

    async def replay() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            out = []
            for turn in turns:
                async with session.request(
                    **turn.with_model("s/tools").replay(proxy, api_key=LOCAL)
                ) as reply:
                    out.append((reply.status, await reply.text()))
            return out

    answers = asyncio.run(replay())
    assert all(status == 200 and "response.completed" in text for status, text in answers)
    body = last_body(scripted)
    assert body["model"] == "tools" and any(m["role"] == "tool" for m in body["messages"])


def test_the_anthropic_sdk_reads_a_remote_reply_with_its_usage(proxy: str) -> None:
    sdk = anthropic.Anthropic(base_url=proxy, api_key=LOCAL, max_retries=0)
    with sdk.messages.stream(model="s/tools", max_tokens=64, messages=ASK) as stream:
        message = stream.get_final_message()
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text", "tool_use"] and message.stop_reason == "tool_use"
    assert message.content[2].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.usage.output_tokens == 6


def test_list_remote_and_ps_show_the_upstreams(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPETUS_API_KEY", LOCAL)
    listed_ = run_cli("list", "--remote", "--url", proxy, "--json")
    rows = json.loads(listed_.stdout)
    assert {r["id"] for r in rows} >= {"s/echo", "patient/tools"}
    assert {r["remote"] for r in rows} == {"s", "patient"}
    assert all(r["context_length"] == 8192 and r["status"] == "up" for r in rows)
    ps = run_cli("ps", "--url", proxy)
    assert ps.returncode == 0 and "remote upstreams" in ps.stdout
    assert "dead" in ps.stdout and "down" in ps.stdout and "echo" in ps.stdout
    assert KEY not in listed_.stdout + ps.stdout


def test_list_remote_without_a_server_asks_the_upstreams(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url, _ = scripted
    monkeypatch.setenv("IMPETUS_REMOTE", f"lab={url}")
    monkeypatch.setenv("IMPETUS_PORT", str(free_port()))  # no server there
    out = run_cli("list", "--remote")
    assert out.returncode == 0, out.stderr
    assert "lab/echo" in out.stdout and "8192" in out.stdout and "no server running" in out.stdout
