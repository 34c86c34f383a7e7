"""The one place that decides how long a reply may be: every engine, the manager and the bench
go through ``reply_budget``, so the context check cannot disagree between them."""

from __future__ import annotations

from impetus_cli.errors import ContextLengthExceeded


def reply_budget(n_ctx: int, n_prompt: int, max_tokens: int | None) -> int:
    """Tokens the reply may have: ``max_tokens`` (None: no limit of its own) clamped to the room
    the prompt leaves in a sequence of ``n_ctx`` tokens. A prompt that leaves no room for one
    token is a ``ContextLengthExceeded`` (a 400 that clients act on), raised before any work."""
    if n_prompt >= n_ctx:
        raise ContextLengthExceeded(n_ctx, n_prompt)
    room = n_ctx - n_prompt
    return room if max_tokens is None else max(0, min(max_tokens, room))
