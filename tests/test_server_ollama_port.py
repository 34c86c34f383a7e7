"""`impetus serve --ollama-port`: the same server also answers where Ollama's clients look,
and a port already taken (by Ollama itself, say) stops it at once with a clear message."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    except OSError:
        return None


def _serve(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "IMPETUS_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "impetus_cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_the_ollama_port_serves_the_same_api(impetus_home: Path) -> None:
    port, ollama_port = free_port(), free_port()
    proc = _serve(impetus_home, "--port", str(port), "--ollama-port", str(ollama_port))
    try:
        deadline = time.monotonic() + 120
        while _get(port, "/health") is None:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "impetus serve did not start"
            time.sleep(0.2)
        for where in (ollama_port, port):
            version = _get(where, "/api/version")
            assert version is not None and version[0] == 200
            assert json.loads(version[1])["version"]
        tags = _get(ollama_port, "/api/tags")
        assert tags is not None and tags[0] == 200 and "models" in json.loads(tags[1])
        models = _get(ollama_port, "/v1/models")  # OpenAI's dialect there too
        assert models is not None and models[0] == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert f":{ollama_port}" in out  # the banner says where Ollama's clients should look


def test_a_taken_ollama_port_is_a_clear_error(impetus_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc = _serve(impetus_home, "--port", str(free_port()), "--ollama-port", str(busy))
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"Cannot listen on 127.0.0.1:{busy}" in out and "--ollama-port" in out
