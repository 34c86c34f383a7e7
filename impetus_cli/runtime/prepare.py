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
from impetus_cli.runtime.types import ChatRequest, CompletionRequest, SamplingParams, ToolSpec

# A base model continues text and never ends a chat turn; sampled, its rambling need not repeat
# exactly (the loop guard's signs), so a chat request to it without max_tokens stops here.
BASE_MODEL_CHAT_TOKENS = 1024


@dataclass(frozen=True)
class Prepared:
    """What the engine runs: the prompt's tokens and the sampling settings (``max_tokens`` is
    final: the request's, or the server default, clamped to the context), and how to read the
    reply (a chat's parser: content, reasoning and tool calls in the model's own syntax)."""

    tokens: list[int]
    sampling: SamplingParams
    parser: ReplyParser | None = None
    # The prompt's first ``instructions`` tokens are its instructions (system prompt, tools),
    # which other sessions of the same agent share; 0: none marked (instructions_end).
    instructions: int = 0


def prepare_chat(engine: Engine, request: ChatRequest, default_max_tokens: int) -> Prepared:
    """A chat request's prompt through the model's own template (tools, reasoning options),
    the grammar that enforces a forced tool choice or a response format, and the parser that
    reads the reply in the model's own tool-call and reasoning syntax."""
    from impetus_cli.runtime.replies import preserved_markers, reply_parser
    from impetus_cli.runtime.stops import stop_strings_for
    from impetus_cli.runtime.templates import render_chat

    info, template = engine.info, engine.chat_template
    tools = request.tools if request.tool_choice != "none" else ()
    prompt = render_chat(
        request.messages,
        tools,
        template=template,
        architecture=info.architecture,
        bos_token=engine.special_text.bos,
        eos_token=engine.special_text.eos,
        reasoning=request.reasoning,
    )
    tokens = engine.tokenize(prompt)
    sampling = replace(
        request.sampling,
        stop=request.sampling.stop + stop_strings_for(info.architecture, template),
        grammar=_grammar(request, tools, template, info.architecture, prompt),
        preserve=preserved_markers(template, info.architecture),
    )
    parser = reply_parser(template, info.architecture, tools=tools, prompt=prompt)
    if info.base_model:  # it never ends a chat turn: by default, stop it sooner
        default_max_tokens = min(default_max_tokens, BASE_MODEL_CHAT_TOKENS)
    budgeted = _budgeted(engine, tokens, sampling, default_max_tokens, request.num_ctx)
    marked = instructions_end(engine, request, prompt, tokens) if engine.saves_instructions else 0
    return Prepared(tokens, budgeted, parser, marked)


def instructions_end(engine: Engine, request: ChatRequest, prompt: str, tokens: list[int]) -> int:
    """How many of the prompt's tokens are the conversation's instructions: everything before
    the first user turn's text (the system prompt, and the tools most templates render with
    it), found in the rendered prompt. A second session of the same agent starts with the same
    tokens, so an engine that cannot share a prefix in place saves its state there
    (llama_slots.py); 0 when the conversation has no system prompt or the template hides it."""
    from impetus_cli.runtime.engines.common import common_prefix

    messages = request.messages
    n_system = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    if n_system == 0 or n_system == len(messages):
        return 0
    system = (messages[n_system - 1].content or "").strip()  # templates may trim it
    first = (messages[n_system].content or "").strip()
    found = prompt.find(system) if system else -1
    if found < 0 or not first:
        return 0
    at = found + len(system)
    start = prompt.find(first, at)
    head = prompt[: start if start >= 0 else at]
    return common_prefix(engine.tokenize(head), tokens)


def _grammar(
    request: ChatRequest,
    tools: tuple[ToolSpec, ...],
    template: str | None,
    architecture: str,
    prompt: str,
) -> str | None:
    """The request's own grammar; or one that makes a forced tool choice ("required" or a
    named function) a call in the model's own syntax; or the response format's."""
    from impetus_cli.runtime.grammar import grammar_for
    from impetus_cli.runtime.replies import reasoning_tags, tool_dialect
    from impetus_cli.runtime.tool_grammar import tool_call_grammar

    if request.sampling.grammar:
        return request.sampling.grammar
    choice = request.tool_choice
    if tools and choice not in (None, "auto", "none"):
        tags = reasoning_tags(template, architecture)
        inside = tags is not None and prompt.rstrip().endswith(tags[0])
        return tool_call_grammar(
            tool_dialect(template, architecture),
            tools,
            str(choice),
            parallel=request.parallel_tool_calls,
            prefix=tags[1] if tags and inside else "",
        )
    return grammar_for(request.response_format)


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
    special = engine.special_text
    if not special.has_fim:
        raise ImpetusError(
            f"{engine.info.name or 'This model'} has no fill-in-the-middle tokens, so `suffix` "
            "is not supported.",
            "Send the prompt without a suffix, or use a code model such as qwen2.5-coder.",
            param="suffix",
        )
    return f"{special.fim_prefix}{prefix}{special.fim_suffix}{suffix}{special.fim_middle}"
