"""Request preparation: from a request in runtime terms to the tokens and settings an engine
runs. Rendering (the chat template, tools), tokenizing, stop strings, the grammar, fill-in-the-
middle prompts, and the one reply-length check (runtime/limits.py) all happen here, before the
server sends its first byte, so every failure is still a clean 4xx."""

from __future__ import annotations

from dataclasses import dataclass, replace

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.engines.base import Engine
from impetus_cli.runtime.limits import reply_budget
from impetus_cli.runtime.replies import ReplyParser
from impetus_cli.runtime.types import ChatRequest, CompletionRequest, SamplingParams


@dataclass(frozen=True)
class Prepared:
    """What the engine runs: the prompt's tokens and the sampling settings (``max_tokens`` is
    final: the request's, or the server default, clamped to the context), and how to read the
    reply (a chat's parser: content, reasoning and tool calls in the model's own syntax)."""

    tokens: list[int]
    sampling: SamplingParams
    parser: ReplyParser | None = None


def prepare_chat(engine: Engine, request: ChatRequest, default_max_tokens: int) -> Prepared:
    """A chat request's prompt through the model's template, and how to read its reply."""
    from impetus_cli.runtime.grammar import grammar_for
    from impetus_cli.runtime.replies import reply_parser
    from impetus_cli.runtime.stops import stop_strings_for

    info = engine.info
    tools = request.tools if request.tool_choice != "none" else ()
    prompt = engine.render(request.messages, tools)
    tokens = engine.tokenize(prompt)
    sampling = replace(
        request.sampling,
        stop=request.sampling.stop + stop_strings_for(info.architecture, info.chat_template),
        grammar=grammar_for(request.response_format) or request.sampling.grammar,
    )
    parser = reply_parser(info.chat_template, info.architecture, tools=tools, prompt=prompt)
    budgeted = _budgeted(engine, tokens, sampling, default_max_tokens, request.num_ctx)
    return Prepared(tokens, budgeted, parser)


def prepare_completion(
    engine: Engine, request: CompletionRequest, default_max_tokens: int
) -> Prepared:
    prompt = request.prompt
    if request.suffix is not None:
        prompt = fim_prompt(engine, request.prompt, request.suffix)
    tokens = engine.tokenize(prompt)
    budgeted = _budgeted(engine, tokens, request.sampling, default_max_tokens, request.num_ctx)
    return Prepared(tokens, budgeted)


def _budgeted(
    engine: Engine,
    tokens: list[int],
    sampling: SamplingParams,
    default_max_tokens: int,
    num_ctx: int | None,
) -> SamplingParams:
    """The reply's final length: the request's (or the default) within the room the prompt
    leaves in the context, which a client may narrow (num_ctx) but never widen here."""
    if not tokens:
        raise ImpetusError("The prompt is empty.", param="messages")
    wanted = sampling.max_tokens if sampling.max_tokens is not None else default_max_tokens
    n_ctx = min(engine.n_ctx, num_ctx) if num_ctx else engine.n_ctx
    return replace(sampling, max_tokens=reply_budget(n_ctx, len(tokens), wanted))


def fim_prompt(engine: Engine, prefix: str, suffix: str) -> str:
    """A fill-in-the-middle prompt in the model's own tokens (prefix, suffix, middle)."""
    specials: dict[str, int] = getattr(engine, "special_tokens", {})
    text = getattr(engine, "token_text", None)
    ids = [specials.get(k, -1) for k in ("fim_pre", "fim_suf", "fim_mid")]
    if text is None or min(ids) < 0:
        raise ImpetusError(
            f"{engine.info.name or 'This model'} has no fill-in-the-middle tokens, so `suffix` "
            "is not supported.",
            "Send the prompt without a suffix, or use a code model such as qwen2.5-coder.",
            param="suffix",
        )
    pre, suf, mid = (text(i) for i in ids)
    return f"{pre}{prefix}{suf}{suffix}{mid}"
