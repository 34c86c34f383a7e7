"""Load and faults (issue 13 §7): many clients at once, then the server still answers.

Starts `impetus serve` on the built-in model (or uses --url), sends N concurrent chat requests
(half streaming, half not), and reports p50/p99 time to first token and total time. Checks what
the issue asks: every request got a 200, or a 503 with Retry-After; nothing stays in flight
afterwards (/impetus/status); the server still answers a normal request. Usage:

    .venv/bin/python benchmarks/load.py [--clients 32] [--max-tokens 64] [--url URL] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers


@dataclass
class Outcome:
    status: int
    stream: bool
    ttft_s: float | None
    total_s: float
    retry_after: str | None
    error: str = ""


def _conn(url: str, timeout: float = 600) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
    )


def one_request(url: str, model: str, i: int, stream: bool, max_tokens: int) -> Outcome:
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": f"Request {i}: write a short poem about the sea."}
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": stream,
    }
    start = time.perf_counter()
    conn = _conn(url)
    try:
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        reply = conn.getresponse()
        ttft = None
        if reply.status == 200 and stream:
            while line := reply.readline():
                text = line.startswith(b"data: {") and b'"content":"' in line
                if ttft is None and text and b'"content":""' not in line:
                    ttft = time.perf_counter() - start
        raw = reply.read()
        if reply.status == 200 and not stream:
            ttft = json.loads(raw)["timings"]["ttft_ms"] / 1000
        return Outcome(
            reply.status,
            stream,
            ttft,
            time.perf_counter() - start,
            reply.getheader("Retry-After"),
            "" if reply.status == 200 else raw[:200].decode("utf-8", "replace"),
        )
    except OSError as exc:
        return Outcome(0, stream, None, time.perf_counter() - start, None, str(exc))
    finally:
        conn.close()


def run_load(url: str, model: str, clients: int, max_tokens: int) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()
        outcomes[i] = one_request(url, model, i, stream=i % 2 == 0, max_tokens=max_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [o for o in outcomes if o is not None]


def in_flight(url: str) -> int:
    conn = _conn(url, 30)
    conn.request("GET", "/impetus/status")
    status = json.loads(conn.getresponse().read())
    return sum(m["in_flight"] + m["queued"] for m in status["models"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(outcomes: list[Outcome], url: str, model: str) -> dict[str, object]:
    ok = [o for o in outcomes if o.status == 200]
    busy = [o for o in outcomes if o.status == 503]
    bad = [
        o for o in outcomes if o.status not in (200, 503) or (o.status == 503 and not o.retry_after)
    ]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    totals = [o.total_s for o in ok]
    after = one_request(url, model, -1, stream=False, max_tokens=8)
    return {
        "clients": len(outcomes),
        "ok": len(ok),
        "busy_503_with_retry_after": len(busy),
        "unexpected": [asdict(o) for o in bad],
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p99_s": percentile(ttfts, 0.99) if ttfts else None,
        "total_p50_s": statistics.median(totals) if totals else None,
        "total_p99_s": percentile(totals, 0.99) if totals else None,
        "in_flight_after": in_flight(url),
        "answers_after": after.status == 200,
    }


@contextmanager
def serve(model: str) -> Iterator[str]:
    """A fresh `impetus serve` on a free port, with an empty IMPETUS_HOME."""
    port = peers.free_port()
    with tempfile.TemporaryDirectory() as home:
        cmd = [sys.executable, "-m", "impetus_cli", "serve", model, "--port", str(port)]
        server = peers.Server(cmd, Path(home) / "serve.log", env={"IMPETUS_HOME": home})
        url = f"http://127.0.0.1:{port}"
        server.start()
        try:
            server.wait_ready(url + "/health")
            yield url
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default="gemma3:270m")
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    with serve(args.model) if not args.url else _given(args.url) as url:
        outcomes = run_load(url, args.model, args.clients, args.max_tokens)
        result = report(outcomes, url, args.model)
    result["command"] = " ".join(["benchmarks/load.py", *sys.argv[1:]])
    result["machine"] = machine
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>28}: {value}")


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
