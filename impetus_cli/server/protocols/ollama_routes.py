"""Ollama's API (/api/*) for the clients that speak only it: Cline's, Continue's and Roo Code's
Ollama providers, ``codex --oss``, the ``ollama`` libraries. Parse (ollama_parse), start on
the manager, respond through the shared stream loop (server/streaming.py) with this dialect's
renderers (ollama_render); model listings in ollama_models; pulls stream our own pull's
progress. Every failure under /api/ answers ``{"error": "..."}`` with its HTTP status."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from impetus_cli.errors import ImpetusError, ModelNotFound
from impetus_cli.runtime.remote.registry import RemoteEntry
from impetus_cli.runtime.types import ChatRequest, CompletionRequest
from impetus_cli.server.errors import register_shape
from impetus_cli.server.http import blocking, json_response, read_json, start_work
from impetus_cli.server.keys import MANAGER
from impetus_cli.server.protocols import ollama_models as models
from impetus_cli.server.protocols import ollama_parse as parse
from impetus_cli.server.protocols import ollama_render as render
from impetus_cli.server.protocols.ollama_pull import stream_pull
from impetus_cli.server.streaming import respond

# What /api/version reports. codex --oss refuses an Ollama older than 0.13.4 (it needs the
# Responses API, which this server has); other clients gate features (tools, thinking,
# structured outputs) on versions well below that. So: a release just past 0.13.4.
OLLAMA_VERSION = "0.13.5"

register_shape("/api/", render.error_shape)


async def version(request: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_VERSION})


async def local_name(request: web.Request, name: str) -> str:
    """Ollama names default their tag to "latest": ``x:latest`` is our ``x`` unless a model
    is called ``x:latest`` itself."""
    manager = request.app[MANAGER]
    if not name.endswith(":latest") or manager.remotes.owns(name):  # a remote's: its upstream's
        return name

    def pick() -> str:
        try:
            manager.resolve(name)
            return name
        except ModelNotFound:
            with contextlib.suppress(ModelNotFound):
                manager.resolve(name.removesuffix(":latest"))
                return name.removesuffix(":latest")
            raise

    return await blocking(request, pick)


async def _load_only(request: web.Request, ask: parse.LoadOnly, chat: bool) -> web.Response:
    manager = request.app[MANAGER]
    name = await local_name(request, ask.model)
    if ask.unload:  # a model that is not loaded is unloaded already; an unknown one is a 404
        await blocking(request, manager.unload, name)
    else:
        await blocking(request, manager.load, name, keep_alive=ask.keep_alive)
    return json_response(render.load_reply(ask.model, ask.unload, chat))


async def _generate(
    request: web.Request, req: ChatRequest | CompletionRequest, wants: parse.Wants, chat: bool
) -> web.StreamResponse:
    manager = request.app[MANAGER]
    started = time.perf_counter()
    asked = req.model
    req = replace(req, model=await local_name(request, req.model))
    was_loaded = any(e.model.name == req.model for e in manager.loaded())
    cancel = threading.Event()
    if isinstance(req, ChatRequest):
        gen = await start_work(request, cancel, manager.start_chat, req, cancel)
    else:
        gen = await start_work(request, cancel, manager.start_completion, req, cancel)
    timing = render.Timing(started, 0.0 if was_loaded else time.perf_counter() - started)
    kind = render.ChatRenderer if chat else render.GenerateRenderer
    renderer = kind(asked, gen.prompt_tokens, gen.token_bytes, timing, logprobs=wants.logprobs)
    return await respond(request, gen, renderer, stream=wants.stream)


def _translate(fn: Any) -> Any:
    """The dialect's parser, then how the reply is wanted: every field is checked before
    any work starts."""

    def both(body: Any) -> tuple[parse.Wants, Any]:
        req = fn(body)
        return parse.wants(body), req

    return both


async def chat(request: web.Request) -> web.StreamResponse:
    wants, req = await read_json(request, _translate(parse.chat_request))
    if isinstance(req, parse.LoadOnly):
        return await _load_only(request, req, chat=True)
    return await _generate(request, req, wants, chat=True)


async def generate(request: web.Request) -> web.StreamResponse:
    wants, req = await read_json(request, _translate(parse.generate_request))
    if isinstance(req, parse.LoadOnly):
        return await _load_only(request, req, chat=False)
    return await _generate(request, req, wants, chat=False)


async def embed(request: web.Request) -> web.Response:
    asked, texts, dimensions = await read_json(request, parse.embed_request)
    started = time.perf_counter()
    if not texts:
        return json_response(render.embed_reply(asked, [], 0, render.Timing(started)))
    name = await local_name(request, asked)
    vectors, tokens = await blocking(request, request.app[MANAGER].embed, name, texts)
    kept = [render.keep_dimensions(v, dimensions) for v in vectors]
    return json_response(render.embed_reply(asked, kept, tokens, render.Timing(started)))


async def embeddings(request: web.Request) -> web.Response:
    asked, prompt = await read_json(request, parse.embeddings_request)
    if not prompt:
        return json_response({"embedding": []})  # as Ollama answers an empty prompt
    name = await local_name(request, asked)
    vectors, _ = await blocking(request, request.app[MANAGER].embed, name, [prompt])
    return json_response({"embedding": list(vectors[0])})


async def tags(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]

    def listing() -> list[dict[str, Any]]:
        local = [models.tag_entry(models.facts(manager, m)) for m in manager.available()]
        return local + [remote_tag(m) for m in manager.remotes.listing()]

    return json_response({"models": await blocking(request, listing)})


def remote_tag(m: RemoteEntry) -> dict[str, Any]:
    """A remote model (runtime/remote) in /api/tags: its name; nothing local to describe."""
    details = {"parent_model": "", "format": "remote", "family": "", "families": None}
    return {
        "name": m.id,
        "model": m.id,
        "modified_at": "1970-01-01T00:00:00Z",
        "size": 0,
        "digest": hashlib.sha256(m.id.encode()).hexdigest(),
        "details": {**details, "parameter_size": "", "quantization_level": ""},
    }


async def ps(request: web.Request) -> web.Response:
    entries = request.app[MANAGER].loaded()
    return json_response({"models": [models.ps_entry(e) for e in entries]})


async def show(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    name = await local_name(request, await read_json(request, parse.name_request))

    def describe() -> dict[str, Any]:
        return models.show_body(models.facts(manager, manager.resolve(name)))

    return json_response(await blocking(request, describe))


async def delete(request: web.Request) -> web.Response:
    """Our store's remove: only what a pull downloaded; another tool's model is refused."""
    from impetus_cli.runtime.store import Store

    manager = request.app[MANAGER]
    name = await local_name(request, await read_json(request, parse.name_request))

    def remove() -> None:
        store = Store(manager.settings)
        model = store.removable(name)
        with contextlib.suppress(ModelNotFound):
            manager.unload(model.name)
        store.remove(model.name)

    await blocking(request, remove)
    return json_response({"status": "success"})


async def pull(request: web.Request) -> web.StreamResponse:
    """Our pull of a catalog name or hf: reference; a model already here is a success at once
    (codex --oss pulls the model it was given before every session)."""
    from impetus_cli.runtime.download import pull as run
    from impetus_cli.runtime.names import parse_ref

    asked, stream = await read_json(request, parse.pull_request)
    manager = request.app[MANAGER]
    try:
        await blocking(request, manager.resolve, await local_name(request, asked))
    except ModelNotFound:
        if parse_ref(asked).kind == "path":  # an unparsable name is a 400 here too
            raise ImpetusError(
                f"{asked} is a local path: a server pulls catalog names and hf: references.",
                f"On the server's machine: impetus import {asked}",
                param="model",
            ) from None
        if stream:
            return await stream_pull(request, asked, manager.settings)
        await blocking(request, run, asked, manager.settings)
    if stream:
        return render_ndjson([{"status": "success"}])
    return json_response({"status": "success"})


def render_ndjson(lines: list[dict[str, Any]]) -> web.Response:
    return web.Response(body=b"".join(render.line(x) for x in lines), content_type=render.NDJSON)


async def copy(request: web.Request) -> web.Response:
    raise ImpetusError(
        "Copying models is not supported: Impetus names each model by where it came from.",
        "Register a file under another name with `impetus import PATH --name NAME`.",
    )


ROUTES = {
    ("GET", "/api/version"): version,
    ("GET", "/api/tags"): tags,
    ("GET", "/api/ps"): ps,
    ("POST", "/api/show"): show,
    ("POST", "/api/chat"): chat,
    ("POST", "/api/generate"): generate,
    ("POST", "/api/embed"): embed,
    ("POST", "/api/embeddings"): embeddings,
    ("POST", "/api/pull"): pull,
    ("DELETE", "/api/delete"): delete,
    ("POST", "/api/copy"): copy,
    # Impetus's own names for the same two verbs (`impetus tui --url` acts through them).
    ("POST", "/impetus/pull"): pull,
    ("POST", "/impetus/rm"): delete,
}
