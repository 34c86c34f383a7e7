"""OpenAI JSON <-> runtime types, as pure functions (tested without HTTP).

Validation is strict about what we use and silent about what we do not: unknown fields are
ignored (clients send stream_options, parallel_tool_calls, reasoning_effort, prediction, user,
cache_control ...), because rejecting them breaks real clients. Bad values raise ImpetusError
with ``param`` set, which the error middleware turns into a 400.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    GenerationChunk,
    SamplingParams,
    ToolCall,
    ToolSpec,
)

ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
MAX_STOP = 64
DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<b64>;base64)?,(?P<data>.*)$", re.DOTALL
)


def bad(message: str, param: str | None = None) -> ImpetusError:
    return ImpetusError(message, param=param)


def _obj(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise bad(f"'{param}' must be an object.", param)
    return value


def _number(
    body: Mapping[str, Any], key: str, lo: float, hi: float, default: float | None
) -> float | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise bad(f"'{key}' must be a number.", key)
    if not lo <= value <= hi:
        raise bad(f"'{key}' must be between {lo} and {hi}, got {value}.", key)
    return float(value)


def _int(body: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{key}' must be an integer.", key)
    if not lo <= value <= hi:
        raise bad(f"'{key}' must be between {lo} and {hi}, got {value}.", key)
    return value


def model_id(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad("'model' is required and must be a string.", "model")
    if len(model) > 256 or "\x00" in model:
        raise bad("'model' is not a valid model id.", "model")
    return model.strip()


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise bad(f"'{key}' must be a boolean.", key)
    return value


def _logprobs(body: Mapping[str, Any], legacy: bool) -> int | None:
    """How many alternatives per token to report, or None for no logprobs. Chat asks with
    ``logprobs: true`` + ``top_logprobs: N``; the legacy completions API with ``logprobs: N``."""
    if legacy:
        return _int(body, "logprobs", 0, 20)
    asked = body.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise bad("'logprobs' must be a boolean.", "logprobs")
    top = _int(body, "top_logprobs", 0, 20)
    if top is not None and not asked:
        raise bad("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    return (top or 0) if asked else None


def sampling(body: Mapping[str, Any], *, legacy: bool = False) -> SamplingParams:
    if _int(body, "n", 1, 128) not in (None, 1):
        raise bad("Only n=1 is supported.", "n")
    max_tokens = _int(body, "max_completion_tokens", 0, 10_000_000)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 0, 10_000_000)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP:
        stops = tuple(stop)
    else:
        raise bad(f"'stop' must be a string or a list of up to {MAX_STOP} strings.", "stop")
    temperature = _number(body, "temperature", 0, 2, 0.8)
    top_k = _int(body, "top_k", 0, 100_000)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad("'seed' must be an integer.", "seed")
    return SamplingParams(
        max_tokens=max_tokens or None,
        temperature=temperature if temperature is not None else 0.8,
        top_p=_number(body, "top_p", 0, 1, 0.95) or 0.95,
        top_k=top_k if top_k is not None else 40,
        min_p=_number(body, "min_p", 0, 1, 0.05) or 0.0,
        repeat_penalty=_number(body, "repeat_penalty", 0.01, 10, 1.0) or 1.0,
        presence_penalty=_number(body, "presence_penalty", -2, 2, 0.0) or 0.0,
        frequency_penalty=_number(body, "frequency_penalty", -2, 2, 0.0) or 0.0,
        seed=seed,
        stop=stops,
        logit_bias=_logit_bias(body.get("logit_bias")),
        logprobs=_logprobs(body, legacy),
        ignore_eos=_flag(body, "ignore_eos"),
    )


def _logit_bias(value: Any) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > 1024:
        raise bad("'logit_bias' must map token ids to numbers.", "logit_bias")
    try:
        return {int(k): max(-100.0, min(100.0, float(v))) for k, v in value.items()}
    except (TypeError, ValueError):
        raise bad("'logit_bias' must map token ids to numbers.", "logit_bias") from None


def _image(part: Mapping[str, Any], param: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
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
        part = _obj(part, f"{param}[{i}]")
        kind = part.get("type")
        if kind in ("text", "input_text"):
            if not isinstance(part.get("text"), str):
                raise bad("A text part needs a string 'text'.", f"{param}[{i}].text")
            texts.append(part["text"])
        elif kind in ("image_url", "input_image"):
            images.append(_image(part, f"{param}[{i}].image_url"))
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
        fn = _obj(_obj(raw, f"{param}[{i}]").get("function"), f"{param}[{i}].function")
        name, args = fn.get("name"), fn.get("arguments", "{}")
        if not isinstance(name, str):
            raise bad("A tool call needs a function name.", f"{param}[{i}].function.name")
        if not isinstance(args, str):
            import json

            args = json.dumps(args)
        calls.append(ToolCall(id=str(raw.get("id") or f"call_{i}"), name=name, arguments=args))
    return tuple(calls)


def messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty array.", "messages")
    out = []
    for i, raw in enumerate(value):
        param = f"messages[{i}]"
        msg = _obj(raw, param)
        raw_role = msg.get("role")
        role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise bad(
                f"Unknown role {msg.get('role')!r}; use system, developer, user, assistant or tool.",
                f"{param}.role",
            )
        content, images = _content(msg.get("content"), f"{param}.content")
        calls = (
            _tool_calls(msg.get("tool_calls"), f"{param}.tool_calls") if role == "assistant" else ()
        )
        if content is None and role != "assistant":
            raise bad(f"'content' is required for {role} messages.", f"{param}.content")
        tool_call_id = msg.get("tool_call_id")
        name = msg.get("name")
        out.append(
            ChatMessage(
                role=role,  # type: ignore[arg-type]
                content=content,
                tool_calls=calls,  # type: ignore[arg-type]
                tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
                name=name if isinstance(name, str) else None,
                images=images,
            )
        )
    return tuple(out)


def tools(value: Any) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad("'tools' must be an array.", "tools")
    specs = []
    for i, raw in enumerate(value):
        tool = _obj(raw, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise bad("Only function tools are supported.", f"tools[{i}].type")
        fn = _obj(tool.get("function"), f"tools[{i}].function")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,128}", name):
            raise bad(
                "A function needs a name of letters, digits, _ . -", f"tools[{i}].function.name"
            )
        params = fn.get("parameters") or {}
        specs.append(
            ToolSpec(
                name=name,
                description=str(fn.get("description") or ""),
                parameters=_obj(params, f"tools[{i}].function.parameters"),
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


def keep_alive(body: Mapping[str, Any]) -> float | None:
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(
            "'keep_alive' is seconds: 0 unloads after the request, -1 keeps the model loaded.",
            "keep_alive",
        )
    return float(value)


def chat_request(body: Any) -> ChatRequest:
    body = _obj(body, "body")
    specs = tools(body.get("tools"))
    choice = tool_choice(body.get("tool_choice"), specs)
    fmt = body.get("response_format")
    if fmt is not None:
        _obj(fmt, "response_format")
    return ChatRequest(
        model=model_id(body),
        messages=messages(body.get("messages")),
        sampling=sampling(body),
        tools=specs,
        tool_choice=choice,
        keep_alive=keep_alive(body),
        response_format=fmt,
    )


def completion_request(body: Any) -> CompletionRequest:
    body = _obj(body, "body")
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
    body = _obj(body, "body")
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


# -- responses -------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """OpenAI's usage, with the prompt tokens served from the cache as OpenAI reports them."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def timings(final: GenerationChunk | None) -> dict[str, Any]:
    """llama-server's ``timings`` object (Continue and others show it): tokens taken from the
    cache, evaluated, and generated, with their speeds."""
    f = final or GenerationChunk()
    evaluated = f.prompt_tokens - f.cached_tokens
    return {
        "cache_n": f.cached_tokens,
        "prompt_n": evaluated,
        "prompt_ms": round(1000 * evaluated / f.prompt_tps, 3) if f.prompt_tps else 0.0,
        "prompt_per_second": round(f.prompt_tps, 3),
        "predicted_n": f.completion_tokens,
        "predicted_ms": round(1000 * f.completion_tokens / f.generation_tps, 3)
        if f.generation_tps
        else 0.0,
        "predicted_per_second": round(f.generation_tps, 3),
        "ttft_ms": round(1000 * f.ttft_s, 3),
    }


TokenBytes = Callable[[int], bytes]


def _token(token: int, logprob: float, piece: TokenBytes) -> dict[str, Any]:
    raw = piece(token)
    return {
        "token": raw.decode("utf-8", "replace"),
        "logprob": logprob,
        "bytes": list(raw),
    }


def chat_logprobs(chunks: Sequence[GenerationChunk], piece: TokenBytes) -> dict[str, Any]:
    """``choices[].logprobs`` of the chat API for the tokens of ``chunks``."""
    content = []
    for chunk in chunks:
        for token, lp, top in zip(
            chunk.token_ids, chunk.logprobs, chunk.top_logprobs or _none(chunk), strict=False
        ):
            entry = _token(token, lp, piece)
            entry["top_logprobs"] = [_token(t, p, piece) for t, p in top]
            content.append(entry)
    return {"content": content}


def completion_logprobs(
    chunks: Sequence[GenerationChunk], piece: TokenBytes, offset: int = 0
) -> dict[str, Any]:
    """``choices[].logprobs`` of the legacy completions API; ``offset``: characters of text
    before these tokens (``text_offset`` counts from the start of the completion)."""
    tokens, values, tops, offsets = [], [], [], []
    for chunk in chunks:
        for token, lp, top in zip(
            chunk.token_ids, chunk.logprobs, chunk.top_logprobs or _none(chunk), strict=False
        ):
            text = piece(token).decode("utf-8", "replace")
            tokens.append(text)
            values.append(lp)
            tops.append({piece(t).decode("utf-8", "replace"): p for t, p in top})
            offsets.append(offset)
            offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _none(chunk: GenerationChunk) -> list[tuple[tuple[int, float], ...]]:
    return [()] * len(chunk.logprobs)


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments or "{}"},
    }


def chat_completion(
    rid: str,
    model: str,
    text: str,
    calls: Sequence[ToolCall],
    finish: str,
    final: GenerationChunk | None,
    prompt: int,
    reasoning: str = "",
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": (text or None) if calls else text}
    if calls:
        message["tool_calls"] = [tool_call_json(c) for c in calls]
    if reasoning:
        message["reasoning_content"] = reasoning
    f = final or GenerationChunk()
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
        ],
        "usage": usage(prompt, f.completion_tokens, f.cached_tokens),
        "timings": timings(final),
    }


def chat_chunk(
    rid: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }


def usage_chunk(
    rid: str, model: str, obj: str, prompt: int, final: GenerationChunk | None
) -> dict[str, Any]:
    f = final or GenerationChunk()
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt, f.completion_tokens, f.cached_tokens),
        "timings": timings(final),
    }


def tool_call_deltas(calls: Sequence[ToolCall], first_index: int) -> list[dict[str, Any]]:
    """Each call: a delta opening it (id, type, name, empty arguments), then its arguments."""
    deltas = []
    for i, call in enumerate(calls, start=first_index):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": i,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
        )
        deltas.append(
            {"tool_calls": [{"index": i, "function": {"arguments": call.arguments or "{}"}}]}
        )
    return deltas


def text_completion(
    rid: str,
    model: str,
    text: str,
    finish: str,
    final: GenerationChunk | None,
    prompt: int,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    f = final or GenerationChunk()
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        "usage": usage(prompt, f.completion_tokens, f.cached_tokens),
        "timings": timings(final),
    }


def text_chunk(
    rid: str,
    model: str,
    text: str,
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
    }


def embeddings(
    model: str, vectors: Sequence[Sequence[float]], fmt: str, tokens: int
) -> dict[str, Any]:
    def encode(vec: Sequence[float]) -> Any:
        if fmt == "base64":
            return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        return list(vec)

    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def finish_reason(chunk: GenerationChunk) -> str:
    """'cancelled' never reaches a client that is still there; report it as a stop."""
    return (
        chunk.finish_reason if chunk.finish_reason in ("stop", "length", "tool_calls") else "stop"
    )


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
