"""The Anthropic Messages API's routes (Claude Code, the Anthropic SDKs): parse
(anthropic_parse), start on the manager, respond through the shared stream loop
(server/streaming.py) with this dialect's renderer (anthropic_render). Every failure under
/v1/messages is answered in Anthropic's error shape."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

from impetus_cli.errors import ContextLengthExceeded, ImpetusError
from impetus_cli.runtime.types import ChatRequest
from impetus_cli.server.errors import register_shape
from impetus_cli.server.http import json_response, read_json, start_work
from impetus_cli.server.keys import MANAGER
from impetus_cli.server.protocols import anthropic_parse as parse
from impetus_cli.server.protocols import anthropic_render as render
from impetus_cli.server.streaming import respond

register_shape("/v1/messages", render.anthropic_shape)


class PromptTooLong(ImpetusError):
    """Anthropic's wording for a prompt over the context: Claude Code reads the two numbers
    and compacts the conversation."""

    code = "context_length_exceeded"

    def __init__(self, n_prompt: int, n_ctx: int):
        super().__init__(f"prompt is too long: {n_prompt} tokens > {n_ctx} maximum")


class Overloaded(ImpetusError):
    """A 503 (queue full, no room for the model right now, shutting down) as Anthropic sends
    it: 529 ``overloaded_error``, which its SDKs and Claude Code retry, after Retry-After."""

    status = 529
    type = "overloaded_error"

    def __init__(self, exc: ImpetusError):
        super().__init__(exc.message, exc.hint)
        self.retry_after = getattr(exc, "retry_after", None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def anthropic_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ContextLengthExceeded as exc:
            raise PromptTooLong(exc.n_prompt, exc.n_ctx) from None
        except ImpetusError as exc:
            if exc.status == 503:
                raise Overloaded(exc) from None
            raise

    return wrapped


@anthropic_errors
async def messages(request: web.Request) -> web.StreamResponse:
    call = await read_json(request, parse.messages_request)
    req = call.request
    cancel = threading.Event()
    gen = await start_work(request, cancel, request.app[MANAGER].start_chat, req, cancel)
    renderer = render.MessageRenderer(
        req.model,
        gen.prompt_tokens,
        gen.token_bytes,
        stops=req.sampling.stop,
        one_call=call.one_call,
    )
    return await respond(request, gen, renderer, stream=call.stream)


@anthropic_errors
async def count_tokens(request: web.Request) -> web.StreamResponse:
    req: ChatRequest = await read_json(request, parse.chat_request)
    cancel = threading.Event()
    n = await start_work(request, cancel, request.app[MANAGER].count_chat_tokens, req, cancel)
    return json_response({"input_tokens": n})


ROUTES = {
    ("POST", "/v1/messages"): messages,
    ("POST", "/v1/messages/count_tokens"): count_tokens,
}
