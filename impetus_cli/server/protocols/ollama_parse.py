"""Ollama's API (/api/chat, /api/generate, /api/embed ...): JSON -> runtime requests.

Pure functions, tested without HTTP. Ollama's clients send OpenAI-shaped tools, sampling in an
``options`` object, ``think`` for reasoning models, ``format`` for JSON output and tool-call
arguments as objects; unknown fields and the options we plan ourselves (threads, GPU layers,
batch sizes, mmap) are ignored, and a bad value is a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from impetus_cli.runtime.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Reasoning,
    SamplingParams,
    ToolCall,
)
from impetus_cli.server.protocols import openai_parse
from impetus_cli.server.protocols.fields import (
    MAX_MESSAGES,
    bad,
    flag,
    integer,
    keep_alive,
    number,
    obj,
    stop_list,
    text,
)

EFFORTS = ("low", "medium", "high")  # `think` as gpt-oss takes it
FILL_CONTEXT = 10_000_000  # num_predict -2: as long as the context allows (clamped there)


@dataclass(frozen=True)
class LoadOnly:
    """A chat or generate request without messages or prompt: Ollama's way to load a model,
    or, with ``keep_alive`` 0, to unload it."""

    model: str
    unload: bool
    keep_alive: float | None


@dataclass(frozen=True)
class Wants:
    """What the reply should carry besides text: a stream or one object, and logprobs."""

    stream: bool
    logprobs: bool


def model_name(body: Mapping[str, Any]) -> str:
    """``model``, or ``name`` as older clients (Continue's /api/show) still send it."""
    raw = body.get("model") if body.get("model") is not None else body.get("name")
    if not isinstance(raw, str) or not raw.strip():
        raise bad("'model' is required and must be a string.", "model")
    if len(raw) > 256 or "\x00" in raw:
        raise bad("'model' is not a valid model name.", "model")
    return raw.strip()


def _options(body: Mapping[str, Any]) -> Mapping[str, Any]:
    value = body.get("options")
    return {} if value is None else obj(value, "options")


def _num_predict(options: Mapping[str, Any]) -> int | None:
    """Ollama's reply limit: N tokens, -1 no limit of its own, -2 fill the context."""
    value = integer(options, "num_predict", -2, 10_000_000, "options.num_predict")
    if value in (None, -1):
        return None
    if value == -2:
        return FILL_CONTEXT
    if value == 0:
        raise bad("'options.num_predict' must be positive, -1 or -2.", "options.num_predict")
    return value


def sampling(body: Mapping[str, Any], logprobs: int | None = None) -> SamplingParams:
    """``options`` as sampling settings; the defaults are the server's, whatever the dialect."""
    opts, d = _options(body), SamplingParams()

    def num(key: str, lo: float, hi: float, default: float) -> float:
        value = number(opts, key, lo, hi, default, f"options.{key}")
        return default if value is None else value

    seed = integer(opts, "seed", -(2**63), 2**64 - 1, "options.seed")
    top_k = integer(opts, "top_k", 0, 100_000, "options.top_k")
    # Ollama's zero values mean "not set" for the penalty (its Go options omit zeros).
    repeat = num("repeat_penalty", 0, 10, 1.0) or 1.0
    return SamplingParams(
        max_tokens=_num_predict(opts),
        temperature=num("temperature", 0, 2, d.temperature),
        top_p=num("top_p", 0, 1, d.top_p),
        top_k=d.top_k if top_k is None else top_k,
        min_p=num("min_p", 0, 1, d.min_p),
        repeat_penalty=repeat,
        typical_p=num("typical_p", 0, 1, 1.0) or 1.0,
        presence_penalty=num("presence_penalty", -2, 2, 0.0),
        frequency_penalty=num("frequency_penalty", -2, 2, 0.0),
        seed=None if seed is None or seed < 0 else seed,  # Ollama: -1 is "random"
        stop=stop_list(opts.get("stop"), "options.stop"),
        logprobs=logprobs,
    )


def num_ctx(body: Mapping[str, Any]) -> int | None:
    """The context the client asks for; the manager honours it or says why not."""
    return integer(_options(body), "num_ctx", 1, 16_777_216, "options.num_ctx")


def wants(body: Mapping[str, Any]) -> Wants:
    """Ollama streams unless told ``stream: false``."""
    return Wants(stream=flag(body, "stream", True), logprobs=flag(body, "logprobs"))


def _logprobs(body: Mapping[str, Any]) -> int | None:
    top = integer(body, "top_logprobs", 0, 20)
    return (top or 0) if flag(body, "logprobs") else None


def reasoning(body: Mapping[str, Any]) -> Reasoning:
    """``think``: true, false, or an effort ("low", "medium", "high") as gpt-oss takes it."""
    think = body.get("think")
    if think is None:
        return Reasoning()
    if isinstance(think, bool):
        return Reasoning(enabled=think)
    if think in EFFORTS:
        return Reasoning(enabled=True, effort=think)
    raise bad("'think' must be true, false, or one of low, medium, high.", "think")


def response_format(value: Any) -> Mapping[str, Any] | None:
    """``format``: "json" for any JSON object, or a JSON schema the reply must follow."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, Mapping):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise bad("'format' must be \"json\" or a JSON schema object.", "format")


def images(value: Any, param: str) -> tuple[str, ...]:
    """Ollama's base64 images, as the data URLs the runtime takes."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise bad(f"'{param}' must be an array of base64 strings.", param)
    urls = []
    for i, data in enumerate(value):
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise bad("An image is not valid base64.", f"{param}[{i}]") from None
        urls.append(f"data:image/png;base64,{data}")
    return tuple(urls)


def _arguments(value: Any, param: str) -> str:
    """Ollama sends a call's arguments as an object; the runtime keeps them as JSON text."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    # sort_keys=False: the client's order, so the next turn's prompt matches this one's cache
    return json.dumps(obj(value, param), ensure_ascii=False)


def _tool_calls(value: Any, param: str, turn: int) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("'tool_calls' must be an array.", param)
    calls = []
    for i, raw in enumerate(value):
        call = obj(raw, f"{param}[{i}]")
        fn = obj(call.get("function"), f"{param}[{i}].function")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise bad("A tool call needs a function name.", f"{param}[{i}].function.name")
        # Ollama's calls may carry no id: one from the call's place in the conversation, the
        # same every turn, so a replayed history renders (and caches) the same prompt.
        given = call.get("id")
        call_id = given if isinstance(given, str) and given else f"call_{turn}_{i}"
        args = _arguments(fn.get("arguments"), f"{param}[{i}].function.arguments")
        calls.append(ToolCall(id=call_id, name=name, arguments=args))
    return tuple(calls)


def _string(msg: Mapping[str, Any], key: str, param: str) -> str | None:
    value = msg.get(key)
    if value is not None and not isinstance(value, str):
        raise bad(f"'{param}.{key}' must be a string.", f"{param}.{key}")
    return value or None


def _message(raw: Any, index: int) -> ChatMessage:
    param = f"messages[{index}]"
    msg = obj(raw, param)
    role = openai_parse.ROLES.get(msg["role"]) if isinstance(msg.get("role"), str) else None
    if role is None:
        raise bad(
            f"Unknown role {msg.get('role')!r}; use system, user, assistant or tool.",
            f"{param}.role",
        )
    content = msg.get("content")
    if content is not None and not isinstance(content, str):
        raise bad(f"'{param}.content' must be a string.", f"{param}.content")
    is_assistant = role == "assistant"
    thinking = msg.get("thinking")
    return ChatMessage(
        role=role,  # type: ignore[arg-type]
        content=content if content is not None or is_assistant else "",
        tool_calls=_tool_calls(msg.get("tool_calls"), f"{param}.tool_calls", index)
        if is_assistant
        else (),
        tool_call_id=_string(msg, "tool_call_id", param),
        name=_string(msg, "tool_name", param) or _string(msg, "name", param),
        images=images(msg.get("images"), f"{param}.images"),
        reasoning=thinking if isinstance(thinking, str) and thinking and is_assistant else None,
    )


def _link_results(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Ollama's tool results name their tool (``tool_name``), not always the call: give each
    the id of the latest unanswered call of that tool, as templates that pair them need."""
    open_calls: list[ToolCall] = []
    out = []
    for msg in messages:
        if msg.role == "assistant" and msg.tool_calls:
            open_calls = list(msg.tool_calls)
        elif msg.role == "tool":
            match = next((c for c in open_calls if c.id == msg.tool_call_id), None) or next(
                (c for c in open_calls if msg.tool_call_id is None and c.name == msg.name), None
            )
            if match is None and msg.tool_call_id is None and open_calls:
                match = open_calls[0]  # unnamed results answer the calls in order
            if match is not None:
                open_calls.remove(match)
                msg = replace(msg, tool_call_id=match.id, name=msg.name or match.name)
        out.append(msg)
    return out


def messages(value: Any) -> tuple[ChatMessage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("'messages' must be an array.", "messages")
    if len(value) > MAX_MESSAGES:
        raise bad(f"'messages' holds more than {MAX_MESSAGES} messages.", "messages")
    return tuple(_link_results([_message(raw, i) for i, raw in enumerate(value)]))


def chat_request(body: Any) -> ChatRequest | LoadOnly:
    body = obj(body, "body")
    name, keep = model_name(body), keep_alive(body)
    history = messages(body.get("messages"))
    if not history:
        return LoadOnly(name, unload=keep == 0, keep_alive=keep)
    specs = openai_parse.tools(body.get("tools"))
    return ChatRequest(
        model=name,
        messages=history,
        sampling=sampling(body, _logprobs(body)),
        tools=specs,
        # not Ollama fields, but Cline's Ollama provider sends OpenAI's tool_choice
        tool_choice=openai_parse.tool_choice(body.get("tool_choice"), specs),
        parallel_tool_calls=flag(body, "parallel_tool_calls", True),
        keep_alive=keep,
        response_format=response_format(body.get("format")),
        reasoning=reasoning(body),
        num_ctx=num_ctx(body),
    )


def generate_request(body: Any) -> ChatRequest | CompletionRequest | LoadOnly:
    """A prompt with ``suffix`` is fill-in-the-middle and ``raw`` skips the template (both a
    completion); any other prompt is one user turn through the model's chat template."""
    body = obj(body, "body")
    name, keep = model_name(body), keep_alive(body)
    prompt, system = text(body, "prompt") or "", text(body, "system")
    suffix = text(body, "suffix") or None  # an empty suffix is no fill-in-the-middle (as Ollama)
    if text(body, "template"):
        raise bad(
            "Per-request templates are not supported: prompts go through the model's own "
            'chat template. Send a prompt you formatted yourself with "raw": true.',
            "template",
        )
    if not prompt and not suffix:
        return LoadOnly(name, unload=keep == 0, keep_alive=keep)
    pictures = images(body.get("images"), "images")
    raw, settings, ctx = flag(body, "raw"), sampling(body, _logprobs(body)), num_ctx(body)
    if pictures and (raw or suffix):
        raise bad(
            "Images go through the model's chat template: a raw or fill-in-the-middle prompt "
            "cannot carry them.",
            "images",
        )
    if raw or suffix:
        return CompletionRequest(
            model=name,
            prompt=prompt,
            suffix=suffix,
            sampling=settings,
            keep_alive=keep,
            num_ctx=ctx,
        )
    turns = [ChatMessage(role="system", content=system)] if system else []
    turns.append(ChatMessage(role="user", content=prompt, images=pictures))
    return ChatRequest(
        model=name,
        messages=tuple(turns),
        sampling=settings,
        keep_alive=keep,
        response_format=response_format(body.get("format")),
        reasoning=reasoning(body),
        num_ctx=ctx,
    )


def embed_request(body: Any) -> tuple[str, list[str], int | None]:
    """/api/embed: (model, texts, dimensions to keep or None)."""
    body = obj(body, "body")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise bad("'input' must be a string or an array of strings.", "input")
    if len(texts) > 2048:
        raise bad("'input' holds more than 2048 texts.", "input")
    return model_name(body), texts, integer(body, "dimensions", 1, 65_536)


def embeddings_request(body: Any) -> tuple[str, str]:
    """/api/embeddings (the older one): (model, prompt)."""
    body = obj(body, "body")
    return model_name(body), text(body, "prompt") or ""


def pull_request(body: Any) -> tuple[str, bool]:
    """/api/pull: (model, stream)."""
    body = obj(body, "body")
    return model_name(body), flag(body, "stream", True)


def name_request(body: Any) -> str:
    """/api/show and /api/delete: the model named."""
    return model_name(obj(body, "body"))
