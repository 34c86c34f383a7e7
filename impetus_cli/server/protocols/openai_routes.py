"""The OpenAI API's routes: parse (openai_parse), start on the manager, respond through the
shared stream loop (server/streaming.py) with this dialect's renderer (openai_render)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.remote.registry import RemoteEntry
from impetus_cli.server.http import blocking, json_response, read_json, start_work
from impetus_cli.server.keys import MANAGER
from impetus_cli.server.protocols import openai_parse as parse
from impetus_cli.server.protocols import openai_render as render
from impetus_cli.server.streaming import respond


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def _translate_chat(body: Any) -> tuple[Any, Any]:
    return body, parse.chat_request(body)


def _translate_completion(body: Any) -> tuple[Any, Any]:
    return body, parse.completion_request(body)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body, req = await read_json(request, _translate_chat)
    cancel = threading.Event()
    gen = await start_work(request, cancel, request.app[MANAGER].start_chat, req, cancel)
    renderer = render.ChatRenderer(
        req.model,
        gen.prompt_tokens,
        gen.token_bytes,
        logprobs=req.sampling.logprobs is not None,
        include_usage=_include_usage(body),
    )
    return await respond(request, gen, renderer, stream=body.get("stream") is True)


async def completions(request: web.Request) -> web.StreamResponse:
    body, req = await read_json(request, _translate_completion)
    cancel = threading.Event()
    gen = await start_work(request, cancel, request.app[MANAGER].start_completion, req, cancel)
    renderer = render.CompletionRenderer(
        req.model,
        gen.prompt_tokens,
        gen.token_bytes,
        logprobs=req.sampling.logprobs is not None,
        include_usage=_include_usage(body),
    )
    return await respond(request, gen, renderer, stream=body.get("stream") is True)


async def embeddings(request: web.Request) -> web.Response:
    model, texts, fmt = await read_json(request, parse.embedding_request)
    vectors, tokens = await blocking(request, request.app[MANAGER].embed, model, texts)
    return json_response(render.embeddings(model, vectors, fmt, tokens))


def model_entries(request: web.Request) -> list[dict[str, Any]]:
    """Every servable model with the context it gets here (planned once per file)."""
    manager = request.app[MANAGER]
    loaded = {e.model.name: e for e in manager.loaded()}
    entries = []
    for model in manager.available():
        entry = loaded.get(model.name)
        base: bool | None = entry.info.base_model if entry else None
        try:
            plan = entry.plan if entry else manager.plan_model(model)
            n_ctx: int | None = plan.n_ctx
            base = manager.info(model).base_model if base is None else base
        except (ImpetusError, OSError):
            n_ctx = None  # e.g. too large for this machine: still listed, without a context
        entries.append(
            {
                "id": model.name,
                "object": "model",
                "created": int(model.created or 0),
                "owned_by": model.origin,
                "context_length": n_ctx,
                "format": model.format,
                "quantization": model.quantization,
                "loaded": entry is not None,
                "base_model": bool(base),
            }
        )
    return entries + remote_entries(manager.remotes.listing())


def remote_entries(models: list[RemoteEntry]) -> list[dict[str, Any]]:
    """Remote models as ``NAME/MODEL``, from their upstreams' last known lists; ``status`` is
    "down" while the upstream does not answer (its requests then fail fast with a 503)."""
    return [
        {
            "id": m.id,
            "object": "model",
            "created": 0,
            "owned_by": f"remote:{m.remote}",
            "context_length": m.context_length,
            "loaded": m.up,
            "status": "up" if m.up else "down",
        }
        for m in models
    ]


async def list_models(request: web.Request) -> web.Response:
    return json_response(
        {"object": "list", "data": await blocking(request, model_entries, request)}
    )


ROUTES = {
    ("GET", "/v1/models"): list_models,
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("POST", "/v1/embeddings"): embeddings,
}
