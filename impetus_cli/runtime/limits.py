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


MAX_GRAMMAR_BYTES = 256 * 1024
MAX_GRAMMAR_NESTING = 64  # llama.cpp's GBNF parser recurses once per nested group


def check_grammar(grammar: str, param: str = "grammar") -> str:
    """A client's own GBNF grammar, refused (a 400) where llama.cpp's parser would recurse
    deep enough to crash the process: groups nested too deeply, or too long a text."""
    from impetus_cli.errors import ImpetusError

    if len(grammar.encode()) > MAX_GRAMMAR_BYTES:
        raise ImpetusError(f"The grammar is over {MAX_GRAMMAR_BYTES // 1024} KB.", param=param)
    depth = deepest = 0
    quote: str | None = None
    escaped = False
    for ch in grammar:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote is not None:
            quote = None if ch == quote else quote
        elif ch in '"[':
            quote = '"' if ch == '"' else "]"
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    if deepest > MAX_GRAMMAR_NESTING:
        raise ImpetusError(
            f"The grammar nests groups {deepest} deep; at most {MAX_GRAMMAR_NESTING} are allowed.",
            param=param,
        )
    return grammar
