"""Record what real coding agents send: a loopback server that speaks every dialect minimally.

Run it, point a client at it, and every request lands as one pretty-printed JSON file in
``--out`` (``NN-METHOD-path-slug.json``: method, path, query, headers with secrets redacted,
body parsed as JSON when it is JSON, and what was answered). It answers Anthropic Messages,
OpenAI Responses, OpenAI chat completions and Ollama's API with short but valid replies, so a
client goes on to its real turns; ``--tool-call`` answers the first turn of a conversation
with a call of a tool the client offered (a shell command when there is one), so the client
runs it and sends the follow-up turn with the tool result.

    .venv/bin/python scripts/capture_server.py --port 8089 --out /tmp/captures --tool-call

Not part of Impetus: a development tool whose captures live in tests/data/clients/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capture_replies as replies

Json = dict[str, Any]
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "proxy-authorization",
        "cookie",
        "x-goog-api-key",
        "chatgpt-account-id",
        "openai-organization",
        "openai-project",
    }
)
REDACTED = "<redacted>"
DEFAULT_TEXT = "Done: the capture server answered this turn."


@dataclass(frozen=True)
class Options:
    """How the capture server answers."""

    out: Path
    models: tuple[str, ...]
    tool_call: bool
    text: str = DEFAULT_TEXT
    context_length: int = 32768
    ollama_version: str = "0.13.5"
    fail: tuple[tuple[str, int], ...] = ()  # (path, status) answered with that error


class Recorder:
    """Writes one JSON file per request, numbered in arrival order, secrets redacted."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.count = 0
        self.secrets: set[str] = set()
        out.mkdir(parents=True, exist_ok=True)

    def record(self, request: web.Request, raw: bytes, answered: Json) -> Path:
        self.count += 1
        headers = {
            name: self._redact_header(name, value) for name, value in request.headers.items()
        }
        entry = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": headers,
            "body": scrub(parse_body(raw), self.secrets),
            "answered": answered,
        }
        name = f"{self.count:02d}-{request.method}-{path_slug(request.path)}.json"
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path

    def _redact_header(self, name: str, value: str) -> str:
        if name.lower() not in SECRET_HEADERS:
            return value
        scheme, _, secret = value.partition(" ")
        if secret and scheme.lower() in ("bearer", "basic"):
            self.secrets.add(secret)
            return f"{scheme} {REDACTED}"
        self.secrets.add(value)
        return REDACTED


def parse_body(raw: bytes) -> Any:
    """The body as JSON when it parses, as text otherwise, None when empty."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def scrub(value: Any, secrets: set[str]) -> Any:
    """Replace every occurrence of a known secret (seen in a header) inside a body."""
    if isinstance(value, str):
        for secret in secrets:
            if len(secret) >= 8 and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, list):
        return [scrub(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    return value


def path_slug(path: str) -> str:
    """`/v1/messages/count_tokens` -> `v1-messages-count_tokens`; `/` -> `root`."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", path).strip("-")
    return slug or "root"


def normalize(path: str) -> str:
    """Collapse doubled slashes and drop a trailing one (`/v1//models/` -> `/v1/models`)."""
    return re.sub(r"/+", "/", path).rstrip("/") or "/"


# --- answering ---------------------------------------------------------------------------

Answer = tuple[web.StreamResponse, Json]
Handler = Callable[[web.Request, Any, Options], Awaitable[Answer]]


def _model(body: Any, options: Options) -> str:
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return str(body["model"])
    return options.models[0]


def _reply(body: Any, options: Options) -> replies.Reply:
    return replies.choose_reply(
        body if isinstance(body, dict) else {}, options.text, options.tool_call
    )


def _what(reply: replies.Reply, kind: str) -> Json:
    return {"status": 200, "kind": kind, "tool_call": reply.tool.name if reply.tool else None}


async def send_sse(
    request: web.Request, events: list[tuple[str | None, Any]]
) -> web.StreamResponse:
    """Stream server-sent events; an event without a name is a bare `data:` line."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {name}\n" if name else ""
        await response.write(f"{head}data: {payload}\n\n".encode())
    await response.write_eof()
    return response


async def send_ndjson(request: web.Request, lines: list[Json]) -> web.StreamResponse:
    """Stream one JSON object per line, as Ollama does."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for line in lines:
        await response.write((json.dumps(line) + "\n").encode())
    await response.write_eof()
    return response


async def anthropic_messages(request: web.Request, body: Any, options: Options) -> Answer:
    reply, model, tokens = _reply(body, options), _model(body, options), replies.rough_tokens(body)
    if isinstance(body, dict) and body.get("stream"):
        events = replies.anthropic_stream(reply, model, tokens)
        return await send_sse(request, list(events)), _what(reply, "anthropic-stream")
    return web.json_response(replies.anthropic_body(reply, model, tokens)), _what(
        reply, "anthropic-json"
    )


async def count_tokens(request: web.Request, body: Any, options: Options) -> Answer:
    tokens = replies.rough_tokens(body)
    return web.json_response({"input_tokens": tokens}), {"status": 200, "kind": "count_tokens"}


async def openai_responses(request: web.Request, body: Any, options: Options) -> Answer:
    reply, model, tokens = _reply(body, options), _model(body, options), replies.rough_tokens(body)
    if isinstance(body, dict) and body.get("stream"):
        events = replies.responses_stream(reply, model, tokens)
        return await send_sse(request, list(events)), _what(reply, "responses-stream")
    return web.json_response(replies.responses_body(reply, model, tokens)), _what(
        reply, "responses-json"
    )


async def chat_completions(request: web.Request, body: Any, options: Options) -> Answer:
    reply, model, tokens = _reply(body, options), _model(body, options), replies.rough_tokens(body)
    if isinstance(body, dict) and body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = replies.chat_stream(reply, model, tokens, usage)
        events: list[tuple[str | None, Any]] = [(None, chunk) for chunk in chunks]
        events.append((None, "[DONE]"))
        return await send_sse(request, events), _what(reply, "chat-stream")
    return web.json_response(replies.chat_body(reply, model, tokens)), _what(reply, "chat-json")


async def ollama_chat(request: web.Request, body: Any, options: Options) -> Answer:
    reply, model, tokens = _reply(body, options), _model(body, options), replies.rough_tokens(body)
    stream = not (isinstance(body, dict) and body.get("stream") is False)
    lines = replies.ollama_chat_lines(reply, model, tokens, stream)
    if stream:
        return await send_ndjson(request, lines), _what(reply, "ollama-chat-ndjson")
    return web.json_response(lines[0]), _what(reply, "ollama-chat-json")


async def ollama_generate(request: web.Request, body: Any, options: Options) -> Answer:
    model, tokens = _model(body, options), replies.rough_tokens(body)
    stream = not (isinstance(body, dict) and body.get("stream") is False)
    lines = replies.ollama_generate_lines(options.text, model, tokens, stream)
    what = {"status": 200, "kind": "ollama-generate", "tool_call": None}
    if stream:
        return await send_ndjson(request, lines), what
    return web.json_response(lines[0]), what


async def ollama_pull(request: web.Request, body: Any, options: Options) -> Answer:
    digest = "sha256:" + "0" * 64
    lines: list[Json] = [
        {"status": "pulling manifest"},
        {"status": f"pulling {digest[7:19]}", "digest": digest, "total": 1000, "completed": 1000},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    if isinstance(body, dict) and body.get("stream") is False:
        return web.json_response({"status": "success"}), {"status": 200, "kind": "ollama-pull"}
    return await send_ndjson(request, lines), {"status": 200, "kind": "ollama-pull-ndjson"}


def _ollama_details() -> Json:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "gemma3",
        "families": ["gemma3"],
        "parameter_size": "268.10M",
        "quantization_level": "Q4_K_M",
    }


def _ollama_entry(name: str) -> Json:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 253_000_000,
        "digest": "0" * 64,
        "details": _ollama_details(),
    }


def static_answer(path: str, body: Any, options: Options) -> Json | None:
    """JSON answers that do not depend on a reply: model lists, versions, /api/show."""
    now = int(time.time())
    if path == "/v1/models":
        data = [
            {"id": m, "object": "model", "created": now, "owned_by": "capture"}
            for m in options.models
        ]
        return {"object": "list", "data": data}
    if path == "/api/version":
        return {"version": options.ollama_version}
    if path == "/api/tags":
        return {"models": [_ollama_entry(m) for m in options.models]}
    if path == "/api/ps":
        entries = [
            dict(
                _ollama_entry(m),
                expires_at="2099-01-01T00:00:00Z",
                size_vram=0,
                context_length=options.context_length,
            )
            for m in options.models
        ]
        return {"models": entries}
    if path == "/api/show":
        return {
            "license": "",
            "modelfile": "",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": _ollama_details(),
            "capabilities": ["completion", "tools"],
            "model_info": {
                "general.architecture": "gemma3",
                "gemma3.context_length": options.context_length,
            },
            "modified_at": "2025-01-01T00:00:00Z",
        }
    return None


ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/messages"): anthropic_messages,
    ("POST", "/v1/messages/count_tokens"): count_tokens,
    ("POST", "/v1/responses"): openai_responses,
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/api/chat"): ollama_chat,
    ("POST", "/api/generate"): ollama_generate,
    ("POST", "/api/pull"): ollama_pull,
}


async def answer(
    request: web.Request, body: Any, options: Options
) -> tuple[web.StreamResponse, Json]:
    """Route one request; unknown routes get a JSON 404 (and are recorded all the same)."""
    path = normalize(request.path)
    status = dict(options.fail).get(path)
    if status is not None:
        error = {"error": {"message": f"capture server told to fail {path}", "type": "api_error"}}
        return web.json_response(error, status=status), {"status": status, "kind": "told_to_fail"}
    handler = ROUTES.get((request.method, path))
    if handler is not None:
        return await handler(request, body, options)
    if path == "/" and request.method in ("GET", "HEAD"):
        return web.Response(text="Ollama is running"), {"status": 200, "kind": "root"}
    static = static_answer(path, body, options) if request.method in ("GET", "POST") else None
    if static is not None:
        return web.json_response(static), {"status": 200, "kind": "json"}
    error = {"error": {"message": f"no route {request.method} {path}", "type": "not_found"}}
    return web.json_response(error, status=404), {"status": 404, "kind": "not_found"}


def make_app(options: Options) -> web.Application:
    """The capture app: one catch-all handler that answers, then records."""
    recorder = Recorder(options.out)
    lock = asyncio.Lock()

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = parse_body(raw)
        response, answered = await answer(request, body, options)
        async with lock:
            path = recorder.record(request, raw, answered)
        print(f"{path.name} -> {answered}", flush=True)
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--host", default="127.0.0.1", help="loopback only, by design")
    parser.add_argument("--out", type=Path, required=True, help="directory for the captures")
    parser.add_argument("--model", action="append", help="model names to list (repeatable)")
    parser.add_argument(
        "--tool-call",
        action="store_true",
        help="answer a conversation's first turn with a tool call",
    )
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the text of every text reply")
    parser.add_argument("--ollama-version", default="0.13.5", help="what /api/version says")
    parser.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="PATH=STATUS",
        help="answer PATH with this HTTP error, to see how a client retries",
    )
    args = parser.parse_args(argv)
    models = tuple(args.model or ["gemma3:270m"])
    options = Options(
        out=args.out,
        models=models,
        tool_call=args.tool_call,
        text=args.text,
        ollama_version=args.ollama_version,
        fail=tuple((path, int(code)) for path, _, code in (f.rpartition("=") for f in args.fail)),
    )
    web.run_app(
        make_app(options),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
