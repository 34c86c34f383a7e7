"""OpenAI chat completions, legacy completions and embeddings: JSON -> runtime requests.

Pure functions, tested without HTTP. Unknown fields are ignored (clients send stream_options,
parallel_tool_calls, prediction, user, cache_control ...); bad values raise ImpetusError with
``param`` set, which becomes a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from impetus_cli.runtime.limits import check_grammar
from impetus_cli.runtime.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Dry,
    Reasoning,
    SamplingParams,
    ToolCall,
    ToolSpec,
)
from impetus_cli.server.protocols.fields import (
    MAX_MESSAGES,
    bad,
    flag,
    integer,
    keep_alive,
    max_tokens,
    model_id,
    number,
    obj,
    stop_list,
)

ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
EFFORTS = ("none", "minimal", "low", "medium", "high")
DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<b64>;base64)?,(?P<data>.*)$", re.DOTALL
)


def _logprobs(body: Mapping[str, Any], legacy: bool) -> int | None:
    """How many alternatives per token to report, or None for no logprobs. Chat asks with
    ``logprobs: true`` + ``top_logprobs: N``; the legacy completions API with ``logprobs: N``;
    llama-server's clients with ``n_probs: N`` (N > 0), where neither is given."""
    n_probs = integer(body, "n_probs", 0, 20)
    if body.get("logprobs") is None and n_probs:
        return n_probs
    if legacy:
        return integer(body, "logprobs", 0, 20)
    asked = body.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise bad("'logprobs' must be a boolean.", "logprobs")
    top = integer(body, "top_logprobs", 0, 20)
    if top is not None and not asked:
        raise bad("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    return (top or 0) if asked else None


def sampling(body: Mapping[str, Any], *, legacy: bool = False) -> SamplingParams:
    """Sampling settings: OpenAI's fields and the llama-server extensions that map onto ours."""
    if integer(body, "n", 1, 128) not in (None, 1):
        raise bad("Only n=1 is supported.", "n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad("'seed' must be an integer.", "seed")
    defaults = SamplingParams()
    top_k = integer(body, "top_k", 0, 100_000)
    return SamplingParams(
        max_tokens=max_tokens(body, "max_completion_tokens", "max_tokens"),
        temperature=number(body, "temperature", 0, 2, defaults.temperature) or 0.0,
        top_p=number(body, "top_p", 0, 1, defaults.top_p) or defaults.top_p,
        top_k=top_k if top_k is not None else defaults.top_k,
        min_p=number(body, "min_p", 0, 1, defaults.min_p) or 0.0,
        repeat_penalty=number(body, "repeat_penalty", 0.01, 10, 1.0) or 1.0,
        typical_p=number(body, "typical_p", 0, 1, 1.0) or 1.0,
        dry=_dry(body),
        presence_penalty=number(body, "presence_penalty", -2, 2, 0.0) or 0.0,
        frequency_penalty=number(body, "frequency_penalty", -2, 2, 0.0) or 0.0,
        seed=seed,
        stop=stop_list(body.get("stop"), "stop"),
        logit_bias=_logit_bias(body.get("logit_bias")),
        logprobs=_logprobs(body, legacy),
        ignore_eos=flag(body, "ignore_eos"),
        grammar=_grammar(body),
    )


def _dry(body: Mapping[str, Any]) -> Dry | None:
    """llama-server's DRY fields; off unless ``dry_multiplier`` is above 0."""
    multiplier = number(body, "dry_multiplier", 0, 100, 0.0)
    if not multiplier:
        return None
    breakers = body.get("dry_sequence_breakers", Dry.breakers)
    if not isinstance(breakers, list | tuple) or len(breakers) > 32:
        raise bad(
            "'dry_sequence_breakers' must be a list of up to 32 strings.", "dry_sequence_breakers"
        )
    if not all(isinstance(b, str) and 0 < len(b) <= 64 for b in breakers):
        raise bad(
            "Each DRY sequence breaker must be a string of 1 to 64 characters.",
            "dry_sequence_breakers",
        )
    allowed = integer(body, "dry_allowed_length", 0, 1000)
    last_n = integer(body, "dry_penalty_last_n", -1, 10_000_000)
    return Dry(
        multiplier,
        base=number(body, "dry_base", 1, 100, Dry.base) or Dry.base,
        allowed_length=Dry.allowed_length if allowed is None else allowed,
        last_n=Dry.last_n if last_n is None else last_n,
        breakers=tuple(breakers),
    )


def _grammar(body: Mapping[str, Any]) -> str | None:
    """llama-server's ``grammar`` extension: a GBNF grammar the reply must follow."""
    grammar = body.get("grammar")
    if grammar is None:
        return None
    if not isinstance(grammar, str):
        raise bad("'grammar' must be a GBNF grammar (a string).", "grammar")
    from impetus_cli.runtime.grammar import user_grammar

    return check_grammar(user_grammar(grammar))


def _logit_bias(value: Any) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > 1024:
        raise bad("'logit_bias' must map token ids to numbers.", "logit_bias")
    try:
        return {int(k): max(-100.0, min(100.0, float(v))) for k, v in value.items()}
    except (TypeError, ValueError):
        raise bad("'logit_bias' must map token ids to numbers.", "logit_bias") from None


def image_url(url: Any, param: str) -> str:
    """An http(s) URL or a base64 data URL, checked."""
    if not isinstance(url, str):
        raise bad("image_url.url must be a string.", param)
    if url.startswith(("http://", "https://")):
        return url
    match = DATA_URL.match(url)
    if not match or not match.group("b64"):
        raise bad("image_url must be an http(s) URL or a base64 data URL.", param)
    try:
        base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise bad("image_url holds invalid base64 data.", param) from None
    return url


def _content(value: Any, param: str) -> tuple[str | None, tuple[str, ...]]:
    """A string, null, or an array of parts (text, image_url): flattened to text + images."""
    if value is None or isinstance(value, str):
        return value, ()
    if not isinstance(value, list):
        raise bad(f"'{param}' must be a string or an array of content parts.", param)
    texts, images = [], []
    for i, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
            continue
        part = obj(part, f"{param}[{i}]")
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise bad("A text part needs a string 'text'.", f"{param}[{i}].text")
            texts.append(part["text"])
        elif kind in ("image_url", "input_image"):
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            images.append(image_url(url, f"{param}[{i}].image_url"))
        else:
            raise bad(f"Unsupported content part type {kind!r}.", f"{param}[{i}].type")
    return "\n".join(texts), tuple(images)


def _tool_calls(value: Any, param: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("'tool_calls' must be an array.", param)
    calls = []
    for i, raw in enumerate(value):
        fn = obj(obj(raw, f"{param}[{i}]").get("function"), f"{param}[{i}].function")
        name, args = fn.get("name"), fn.get("arguments", "{}")
        if not isinstance(name, str):
            raise bad("A tool call needs a function name.", f"{param}[{i}].function.name")
        if not isinstance(args, str):
            args = json.dumps(args)
        calls.append(ToolCall(id=str(raw.get("id") or f"call_{i}"), name=name, arguments=args))
    return tuple(calls)


def messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty array.", "messages")
    if len(value) > MAX_MESSAGES:
        raise bad(f"'messages' holds more than {MAX_MESSAGES} messages.", "messages")
    return tuple(_message(raw, f"messages[{i}]") for i, raw in enumerate(value))


def _message(raw: Any, param: str) -> ChatMessage:
    msg = obj(raw, param)
    raw_role = msg.get("role")
    role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise bad(
            f"Unknown role {msg.get('role')!r}; use system, developer, user, assistant or tool.",
            f"{param}.role",
        )
    content, images = _content(msg.get("content"), f"{param}.content")
    calls = _tool_calls(msg.get("tool_calls"), f"{param}.tool_calls") if role == "assistant" else ()
    if content is None and role != "assistant":
        raise bad(f"'content' is required for {role} messages.", f"{param}.content")
    tool_call_id, name = msg.get("tool_call_id"), msg.get("name")
    reasoning = msg.get("reasoning_content", msg.get("reasoning"))
    return ChatMessage(
        role=role,  # type: ignore[arg-type]
        content=content,
        tool_calls=calls,
        tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
        name=name if isinstance(name, str) else None,
        images=images,
        reasoning=reasoning if isinstance(reasoning, str) and role == "assistant" else None,
    )


def tool_spec(name: Any, description: Any, parameters: Any, param: str) -> ToolSpec:
    """One function tool, whatever dialect described it."""
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,128}", name):
        raise bad("A function needs a name of letters, digits, _ . -", f"{param}.name")
    return ToolSpec(
        name=name,
        description=str(description or ""),
        parameters=obj(parameters or {}, f"{param}.parameters"),
    )


def tools(value: Any) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("'tools' must be an array.", "tools")
    specs = []
    for i, raw in enumerate(value):
        tool = obj(raw, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise bad("Only function tools are supported.", f"tools[{i}].type")
        fn = obj(tool.get("function"), f"tools[{i}].function")
        specs.append(
            tool_spec(
                fn.get("name"), fn.get("description"), fn.get("parameters"), f"tools[{i}].function"
            )
        )
    return tuple(specs)


def tool_choice(value: Any, specs: Sequence[ToolSpec]) -> str | None:
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("function"), Mapping):
        name = value["function"].get("name")
        if name in {t.name for t in specs}:
            return str(name)
    raise bad(
        "'tool_choice' must be auto, none, required or a function named in tools.", "tool_choice"
    )


def reasoning(body: Mapping[str, Any]) -> Reasoning:
    effort = body.get("reasoning_effort")
    if effort is None:
        return Reasoning()
    if effort not in EFFORTS:
        raise bad(f"'reasoning_effort' must be one of {', '.join(EFFORTS)}.", "reasoning_effort")
    return Reasoning(enabled=effort != "none", effort=None if effort == "none" else effort)


def response_format(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """OpenAI's ``response_format``, or llama-server's ``json_schema`` extension."""
    fmt = body.get("response_format")
    if fmt is not None:
        return obj(fmt, "response_format")
    schema = body.get("json_schema")
    if schema is not None:
        return {"type": "json_schema", "json_schema": {"schema": obj(schema, "json_schema")}}
    return None


def chat_request(body: Any) -> ChatRequest:
    body = obj(body, "body")
    specs = tools(body.get("tools"))
    choice = tool_choice(body.get("tool_choice"), specs)
    return ChatRequest(
        model=model_id(body),
        messages=messages(body.get("messages")),
        sampling=sampling(body),
        tools=specs,
        tool_choice=choice,
        parallel_tool_calls=flag(body, "parallel_tool_calls", True),
        keep_alive=keep_alive(body),
        response_format=response_format(body),
        reasoning=reasoning(body),
    )


def completion_request(body: Any) -> CompletionRequest:
    body = obj(body, "body")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("'prompt' must be a string (one prompt per request).", "prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise bad("'suffix' must be a string.", "suffix")
    return CompletionRequest(
        model=model_id(body),
        prompt=prompt,
        sampling=sampling(body, legacy=True),
        suffix=suffix or None,
        keep_alive=keep_alive(body),
    )


def embedding_request(body: Any) -> tuple[str, list[str], str]:
    body = obj(body, "body")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(texts, list)
        or not texts
        or not all(isinstance(t, str) for t in texts)
        or len(texts) > 2048
    ):
        raise bad("'input' must be a string or a non-empty array of up to 2048 strings.", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad("'encoding_format' must be float or base64.", "encoding_format")
    return model_id(body), texts, fmt
