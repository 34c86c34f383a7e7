"""Server-sent events as OpenAI clients parse them: `data: <json>` lines, `data: [DONE]` last.

No `event:` field and no `: ping` comments (Continue's parser takes a comment for the end of
the stream). A failure after the stream began is sent as `data: {"error": ...}`, then the
stream closes.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    await response.prepare(request)
    return response


async def send(response: web.StreamResponse, data: Any) -> None:
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    await response.write(f"data: {payload}\n\n".encode())


async def done(response: web.StreamResponse) -> None:
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
