"""Remote engines (issue 18 §1): what going through impetus adds to a request to an upstream.

Starts an upstream `impetus serve` on the built-in Gemma 3 270M and a proxy `impetus serve
--remote up=URL` (no local model), both on loopback, then sends the same streamed chat request
to the upstream directly and through the proxy, alternating which goes first in each round.
Every reply has the same length (`ignore_eos`, temperature 0), and the upstream serves the
prompt from its cache after the warm-up, so the time to first token is mostly the path itself.

With ``--upstream scripted`` the upstream is instead a small aiohttp server (a subprocess)
that streams ready-made chunks at ``--tps`` tokens per second (0: as fast as it can): the
relay's own cost, without a model competing with it for the CPU.

Reports, per path: the median time to first token (client side: request sent -> first content
chunk) and decode rate (tokens after the first / time between first and last); the added TTFT
as the median of the per-round differences; the decode overhead (1 - proxy / direct); and the
proxy process's CPU time per relayed token and per second of relaying. Usage:

    .venv/bin/python benchmarks/remote.py [--upstream impetus|scripted] [--tps 100]
        [--rounds 20] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import MODEL, Quiet, Server, free_port, machine

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
# The scripted upstream: OpenAI's stream shape, one token per event, paced at argv[2] tok/s.
SCRIPTED = r"""
import asyncio, json, sys
from aiohttp import web
port, tps = int(sys.argv[1]), float(sys.argv[2])
def sse(d):
    return ("data: " + (d if isinstance(d, str) else json.dumps(d)) + "\n\n").encode()
def chunk(delta, finish=None):
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
async def health(request):
    return web.json_response({"status": "ok"})
async def models(request):
    return web.json_response({"data": [{"id": "gemma3:270m", "max_model_len": 4096}]})
async def chat(request):
    n = (await request.json())["max_tokens"]
    reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await reply.prepare(request)
    await reply.write(sse(chunk({"role": "assistant", "content": ""})))
    for _ in range(n):
        await reply.write(sse(chunk({"content": " word"})))
        await asyncio.sleep(1 / tps if tps else 0)
    usage = {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n}
    await reply.write(sse(chunk({}, "length")) + sse({"id": "c", "choices": [], "usage": usage}))
    await reply.write(sse("[DONE]"))
    await reply.write_eof()
    return reply
app = web.Application()
app.router.add_get("/health", health)
app.router.add_get("/v1/models", models)
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=port, print=None)
"""


@dataclass
class Reply:
    ttft_s: float
    decode_tps: float
    tokens: int
    last_s: float  # request sent -> last token


def one(url: str, model: str, max_tokens: int) -> Reply:
    """One streamed chat completion, timed on the client."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=300)
    try:
        start = time.perf_counter()
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        reply = conn.getresponse()
        if reply.status != 200:
            raise RuntimeError(f"{url}: {reply.status} {reply.read()[:300]!r}")
        first = last = 0.0
        tokens = 0
        while line := reply.readline():
            if line.startswith(b"data: {") and _content(line[6:]):
                last = time.perf_counter()
                first = first or last
                tokens += 1
        span = last - first
        return Reply(first - start, (tokens - 1) / span if span > 0 else 0.0, tokens, last - start)
    finally:
        conn.close()


def _content(data: bytes) -> bool:
    """Whether an event carries text (the first, role-only chunk does not)."""
    choices = json.loads(data).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def rounds(direct: str, proxy: str, n: int, max_tokens: int, proxy_pid: int) -> dict[str, Any]:
    """n rounds, each one request per path (the order alternates); the proxy's CPU time."""
    pairs: list[tuple[Reply, Reply]] = []
    cpu = psutil.Process(proxy_pid)
    cpu_before = sum(cpu.cpu_times()[:2])
    for i in range(n):
        if i % 2 == 0:
            d = one(direct, MODEL, max_tokens)
            p = one(proxy, f"up/{MODEL}", max_tokens)
        else:
            p = one(proxy, f"up/{MODEL}", max_tokens)
            d = one(direct, MODEL, max_tokens)
        pairs.append((d, p))
    cpu_s = sum(cpu.cpu_times()[:2]) - cpu_before
    relayed = sum(p.tokens for _, p in pairs)
    relaying_s = sum(p.ttft_s + (p.tokens - 1) / p.decode_tps for _, p in pairs if p.decode_tps)
    result = summary(pairs, cpu_s / max(relayed, 1))
    result["proxy_cpu_ms_per_s"] = round(1000 * cpu_s / relaying_s, 2) if relaying_s else None
    return result


def summary(pairs: list[tuple[Reply, Reply]], cpu_per_token_s: float) -> dict[str, Any]:
    med = statistics.median
    direct_tps = med(d.decode_tps for d, _ in pairs)
    proxy_tps = med(p.decode_tps for _, p in pairs)
    added = [p.ttft_s - d.ttft_s for d, p in pairs]
    added_last = [p.last_s - d.last_s for d, p in pairs]
    return {
        "rounds": len(pairs),
        "tokens_per_reply": pairs[0][0].tokens,
        "ttft_direct_ms": round(1000 * med(d.ttft_s for d, _ in pairs), 2),
        "ttft_proxy_ms": round(1000 * med(p.ttft_s for _, p in pairs), 2),
        "added_ttft_median_ms": round(1000 * med(added), 2),
        "added_ttft_p90_ms": round(1000 * sorted(added)[int(0.9 * (len(added) - 1))], 2),
        "ttft_min_direct_ms": round(1000 * min(d.ttft_s for d, _ in pairs), 2),
        "ttft_min_proxy_ms": round(1000 * min(p.ttft_s for _, p in pairs), 2),
        "added_last_token_median_ms": round(1000 * med(added_last), 2),
        "decode_direct_tps": round(direct_tps, 2),
        "decode_proxy_tps": round(proxy_tps, 2),
        "decode_overhead_pct": round(100 * (1 - proxy_tps / direct_tps), 2) if direct_tps else None,
        "proxy_cpu_ms_per_token": round(1000 * cpu_per_token_s, 3),
        "samples": [(asdict(d), asdict(p)) for d, p in pairs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", choices=("impetus", "scripted"), default="impetus")
    parser.add_argument("--tps", type=float, default=100.0, help="the scripted upstream's pace")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-wait", type=float, default=300.0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    up_port, proxy_port = free_port(), free_port()
    direct, proxy = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{proxy_port}"
    serve = [sys.executable, "-m", "impetus_cli", "serve"]
    upstream_argv = [*serve, "--port", str(up_port), "--threads", str(args.threads)]
    upstream_argv += ["--ctx", str(args.ctx), "--parallel", "1", MODEL]
    if args.upstream == "scripted":
        upstream_argv = [sys.executable, "-c", SCRIPTED, str(up_port), str(args.tps)]
    proxy_argv = [*serve, "--port", str(proxy_port), "--remote", f"up={direct}"]
    with tempfile.TemporaryDirectory() as logs:
        upstream = Server(upstream_argv, Path(logs) / "upstream.log")
        relay = Server(proxy_argv, Path(logs) / "proxy.log")
        try:
            upstream.start()
            upstream.wait_ready(direct + "/health")
            relay.start()
            relay.wait_ready(proxy + "/health")
            wait_listed(proxy)
            for _ in range(args.warmup):
                one(direct, MODEL, args.max_tokens)
                one(proxy, f"up/{MODEL}", args.max_tokens)
            quiet = Quiet(args.max_wait, args.retries)
            assert relay.proc is not None
            pid = relay.proc.pid
            result = quiet.run(
                "remote", lambda: rounds(direct, proxy, args.rounds, args.max_tokens, pid)
            )
        finally:
            relay.stop()
            upstream.stop()
    result["busy_during_run"] = quiet.log
    result["kept_although_disturbed"] = quiet.disturbed
    result["command"] = " ".join(["benchmarks/remote.py", *sys.argv[1:]])
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if key != "samples":
            print(f"{key:>26}: {value}")


def wait_listed(proxy: str, timeout: float = 60.0) -> None:
    """Until the proxy lists the upstream's model (its first probe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(proxy.removeprefix("http://"), timeout=5)
        conn.request("GET", "/v1/models")
        ids = [m["id"] for m in json.loads(conn.getresponse().read())["data"]]
        conn.close()
        if f"up/{MODEL}" in ids:
            return
        time.sleep(0.1)
    raise RuntimeError("the proxy never listed the upstream's model")


if __name__ == "__main__":
    main()
