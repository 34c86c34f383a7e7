"""The OpenAI Responses API's routes: create (stateless as Codex uses it, or kept for
``previous_response_id``), count input tokens, and retrieve, delete and list the input items
of a kept response."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from aiohttp import web

from impetus_cli.errors import ImpetusError
from impetus_cli.server.http import json_response, read_json, start_work
from impetus_cli.server.keys import MANAGER
from impetus_cli.server.protocols import responses_parse as parse
from impetus_cli.server.protocols.responses_render import Json, ResponsesRenderer
from impetus_cli.server.protocols.responses_store import ResponseStore, StoredResponse
from impetus_cli.server.streaming import respond

# One store per application (a test process runs several servers); it lives as long as the app.
_STORES: weakref.WeakKeyDictionary[web.Application, ResponseStore] = weakref.WeakKeyDictionary()


class ResponseNotFound(ImpetusError):
    status = 404
    code = "response_not_found"


def store_of(app: web.Application) -> ResponseStore:
    store = _STORES.get(app)
    if store is None:
        store = _STORES[app] = ResponseStore()
    return store


async def create(request: web.Request) -> web.StreamResponse:
    store = store_of(request.app)
    call = await read_json(request, lambda body: parse.responses_request(body, store))
    cancel = threading.Event()
    gen = await start_work(request, cancel, request.app[MANAGER].start_chat, call.chat, cancel)

    def keep(response: Json) -> None:
        store.put(response, call.input_items, call.previous_response_id)

    renderer = ResponsesRenderer(
        call, call.chat.model, gen.prompt_tokens, keep if call.store else None, gen.token_bytes
    )
    return await respond(request, gen, renderer, stream=call.stream)


async def input_tokens(request: web.Request) -> web.Response:
    """The prompt tokens a request would take (``client.responses.input_tokens.count``),
    counted as a create would prepare it; nothing is evaluated."""
    store = store_of(request.app)
    call = await read_json(request, lambda body: parse.responses_request(body, store))
    cancel = threading.Event()
    manager = request.app[MANAGER]
    count = await start_work(request, cancel, manager.count_chat_tokens, call.chat, cancel)
    return json_response({"object": "response.input_tokens", "input_tokens": count})


def _stored(request: web.Request) -> StoredResponse:
    rid = request.match_info["response_id"]
    entry = store_of(request.app).get(rid)
    if entry is None:
        raise ResponseNotFound(
            f"No response found with id '{rid}'.",
            "Only responses created with store: true are kept, in memory, while the server runs.",
            param="response_id",
        )
    return entry


async def retrieve(request: web.Request) -> web.Response:
    return json_response(_stored(request).response)


async def delete(request: web.Request) -> web.Response:
    rid = _stored(request).response["id"]
    store_of(request.app).delete(rid)
    return json_response({"id": rid, "object": "response", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    """The items a kept response was asked with (not those of the turns before it)."""
    items: list[Any] = list(_stored(request).input_items)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ImpetusError("'order' must be asc or desc.", param="order")
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise ImpetusError("'limit' must be an integer.", param="limit") from None
    if not 1 <= limit <= 100:
        raise ImpetusError("'limit' must be between 1 and 100.", param="limit")
    if order == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )


ROUTES = {
    ("POST", "/v1/responses"): create,
    ("POST", "/v1/responses/input_tokens"): input_tokens,
    ("GET", "/v1/responses/{response_id}"): retrieve,
    ("DELETE", "/v1/responses/{response_id}"): delete,
    ("GET", "/v1/responses/{response_id}/input_items"): input_items,
}
