"""Issue 13: no web page can drive the server, no request can wedge it, every request is logged.

Scheduling and error paths run on the scripted FakeEngine (every feature also has a real-engine
test elsewhere); the servers are real aiohttp servers on loopback.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.manager import ModelManager
from tests.fixtures.fake_engine import FakeEngine, fake_info, fake_model
from tests.fixtures.servers import Registry, start_server
from tests.test_server_openai import client, raw_post

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def fake_server_with(tmp_path: Path, **settings: Any) -> Iterator[tuple[str, ModelManager]]:
    FakeEngine.reset()
    models = {name: fake_model(tmp_path, name).path for name in ("fake", "other")}
    base = dict(ctx=4096, parallel=1, keep_alive=-1, queue_size=4, queue_timeout=30.0)
    config = replace(load_settings(), **{**base, **settings})
    manager = ModelManager(
        config,
        store=Registry(models),
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: 100_000_000_000,
        allow_paths=False,
    )
    manager.models.info = lambda m: fake_info(m.path)  # type: ignore[method-assign]
    with start_server(manager, config) as url:
        yield url, manager


def request(url: str, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body or None, headers=headers)
    reply = conn.getresponse()
    raw = reply.read()
    conn.close()
    return reply.status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw


# -- a web page must not drive a loopback server ---------------------------------------------


def test_a_foreign_host_header_is_refused(fake_server: str) -> None:
    status, body = request(fake_server, "GET", "/v1/models", Host="attacker.example")
    assert status == 403 and "DNS rebinding" in body["error"]["message"]
    for host in ("localhost:8080", "127.0.0.1", "[::1]:9"):
        assert request(fake_server, "GET", "/v1/models", Host=host)[0] == 200


def test_configured_host_names_are_allowed(tmp_path: Path) -> None:
    with fake_server_with(tmp_path, allowed_hosts=("box.lan",)) as (url, _):
        assert request(url, "GET", "/v1/models", Host="box.lan:8080")[0] == 200
        assert request(url, "GET", "/v1/models", Host="other.lan")[0] == 403


def test_a_cross_origin_simple_post_cannot_load_a_model(fake_server: str) -> None:
    body = json.dumps({"model": "fake", "pin": True, "keep_alive": -1}).encode()
    status, reply = request(
        fake_server,
        "POST",
        "/impetus/load",
        body,
        **{"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert status == 403 and "evil.example" in reply["error"]["message"]
    assert FakeEngine.loads == []


def test_json_endpoints_require_a_json_body(fake_server: str) -> None:
    body = json.dumps(CHAT).encode()
    status, reply = request(
        fake_server, "POST", "/v1/chat/completions", body, **{"Content-Type": "text/plain"}
    )
    assert status == 415 and reply["error"]["code"] == "unsupported_media_type"
    # curl -d (a form content type) still works from a terminal: no Origin, not a browser
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert request(fake_server, "POST", "/v1/chat/completions", body, **form)[0] == 200


def test_configured_cors_origin_may_post(tmp_path: Path) -> None:
    with fake_server_with(tmp_path, cors_origins=("https://app.example",)) as (url, _):
        headers = {"Content-Type": "application/json", "Origin": "https://app.example"}
        status, _ = request(
            url, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(), **headers
        )
        assert status == 200


# -- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1])
def test_max_tokens_zero_or_negative_is_a_400(fake_server: str, value: int) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        status, _, raw = raw_post(fake_server, "/v1/chat/completions", {**CHAT, key: value})
        assert status == 400 and json.loads(raw)["error"]["param"] == key


def test_non_finite_numbers_are_refused_and_status_stays_valid_json(fake_server: str) -> None:
    for raw in (
        b'{"model": "fake", "keep_alive": NaN}',
        b'{"model": "fake", "keep_alive": Infinity}',
    ):
        status, _, reply = raw_post(fake_server, "/impetus/load", raw)
        assert status == 400 and "not valid JSON" in json.loads(reply)["error"]["message"]
    status, _, reply = raw_post(fake_server, "/impetus/load", {"model": "fake", "keep_alive": 60})
    assert status == 200
    with urllib_get(fake_server + "/impetus/status") as text:
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in /impetus/status"))


@contextmanager
def urllib_get(url: str) -> Iterator[str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as reply:
        yield reply.read().decode()


def test_too_many_messages_is_a_400_and_the_server_keeps_serving(fake_server: str) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "x"}] * 100_001}
    status, _, raw = raw_post(fake_server, "/v1/chat/completions", body)
    assert status == 400 and json.loads(raw)["error"]["param"] == "messages"
    assert client(fake_server).models.list().data[0].id == "fake"


# -- slots, loads and shutdown under concurrency -----------------------------------------------


def _hang_up_streaming(url: str, body: dict[str, Any]) -> None:
    """Send a streaming request and close the socket before any answer arrives."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps({**body, "stream": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        time.sleep(0.3)  # the server is now loading the model for this request


def test_a_client_that_hangs_up_during_a_cold_load_leaks_no_slot(tmp_path: Path) -> None:
    with fake_server_with(tmp_path, parallel=1) as (url, manager):
        FakeEngine.load_delay = 1.5
        _hang_up_streaming(url, CHAT)
        _wait(lambda: manager.loaded() and manager.loaded()[0].idle)
        FakeEngine.load_delay = 0.0
        reply = client(url).chat.completions.create(model="fake", messages=CHAT["messages"])
        assert reply.choices[0].message.content == "ok"
        assert manager.loaded()[0].in_flight == 0


def test_a_client_that_hangs_up_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    with fake_server_with(tmp_path, parallel=1) as (url, manager):
        manager.load("fake")
        FakeEngine.enqueue(["a"] * 40)
        manager.loaded()[0].engine.step_delay = 0.05  # type: ignore[attr-defined]
        busy = threading.Thread(target=raw_post, args=(url, "/v1/chat/completions", CHAT))
        busy.start()
        _wait(lambda: manager.loaded()[0].in_flight == 1)
        _hang_up_streaming(url, CHAT)
        busy.join(30)
        _wait(lambda: manager.loaded()[0].idle)
        reply = client(url).chat.completions.create(model="fake", messages=CHAT["messages"])
        assert reply.choices[0].message.content == "ok"


def test_unload_while_busy_refuses_the_queue_and_closes_after_the_running_reply(
    tmp_path: Path,
) -> None:
    with fake_server_with(tmp_path, parallel=1) as (url, manager):
        manager.load("fake")
        FakeEngine.enqueue(["a"] * 30)
        manager.loaded()[0].engine.step_delay = 0.05  # type: ignore[attr-defined]
        results: dict[str, Any] = {}

        def post(key: str) -> None:
            results[key] = raw_post(url, "/v1/chat/completions", CHAT)

        running = threading.Thread(target=post, args=("running",))
        running.start()
        _wait(lambda: manager.loaded()[0].in_flight == 1)
        queued = threading.Thread(target=post, args=("queued",))
        queued.start()
        _wait(lambda: manager.loaded()[0].waiting == 1)
        assert raw_post(url, "/impetus/unload", {"model": "fake"})[0] == 200
        assert FakeEngine.closed == []  # still answering the running request
        running.join(30)
        queued.join(30)
        assert results["running"][0] == 200
        assert json.loads(results["running"][2])["choices"][0]["message"]["content"] == "a" * 30
        status, headers, raw = results["queued"]
        assert status == 503 and "unloaded" in json.loads(raw)["error"]["message"]
        assert "Retry-After" in headers
        assert FakeEngine.closed == ["fake"]


def test_event_readers_hold_no_worker_thread_and_are_capped(fake_server: str) -> None:
    host, port = fake_server.removeprefix("http://").split(":")
    before = threading.active_count()
    readers = []
    try:
        for _ in range(64):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", "/impetus/events")
            assert conn.getresponse().status == 200
            readers.append(conn)
        assert threading.active_count() < before + 10
        status, reply = request(fake_server, "GET", "/impetus/events")
        assert status == 503 and reply["error"]["code"] == "overloaded"
        assert client(fake_server).models.list().data[0].id == "fake"
    finally:
        for conn in readers:
            conn.close()


def test_every_request_is_in_the_access_log_with_its_status(
    fake_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="impetus.server"):
        raw_post(fake_server, "/v1/chat/completions", {**CHAT, "model": "nope"})
        raw_post(fake_server, "/v1/chat/completions", {**CHAT, "max_tokens": 0})
        _wait(lambda: len(caplog.records) >= 2)
    lines = [r.getMessage() for r in caplog.records]
    assert any("/v1/chat/completions 404" in line for line in lines), lines
    assert any("/v1/chat/completions 400" in line for line in lines), lines


def _wait(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
