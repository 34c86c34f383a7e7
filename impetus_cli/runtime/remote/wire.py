"""Runtime requests -> the JSON an OpenAI-compatible upstream takes.

Pure functions. Whatever dialect a client spoke (Anthropic Messages, Responses, Ollama, OpenAI),
its request reached the runtime as a ChatRequest or CompletionRequest; this writes it as chat
completions or completions, always streamed with usage, which every such server speaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from impetus_cli.runtime.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Reasoning,
    SamplingParams,
    ToolCall,
)

_DEFAULTS = SamplingParams()


def sampling_fields(s: SamplingParams) -> dict[str, Any]:
    """The sampling settings to send. A setting equal to the runtime's default is left out:
    the parsers fill defaults in for fields a client did not send, and an upstream's own
    defaults (vLLM takes the model's generation_config) are better than ours for its model.
    Extensions beyond OpenAI's fields (top_k, min_p, repetition penalties, grammar,
    ignore_eos) are understood by vLLM, SGLang and llama-server, and only sent when set."""
    out: dict[str, Any] = {}
    pairs = (
        ("temperature", s.temperature, _DEFAULTS.temperature),
        ("top_p", s.top_p, _DEFAULTS.top_p),
        ("top_k", s.top_k, _DEFAULTS.top_k),
        ("min_p", s.min_p, _DEFAULTS.min_p),
        ("presence_penalty", s.presence_penalty, 0.0),
        ("frequency_penalty", s.frequency_penalty, 0.0),
    )
    out.update({key: value for key, value, default in pairs if value != default})
    if s.repeat_penalty != 1.0:  # llama-server's name, and vLLM's / SGLang's
        out["repeat_penalty"] = out["repetition_penalty"] = s.repeat_penalty
    if s.seed is not None:
        out["seed"] = s.seed
    if s.stop:
        out["stop"] = list(s.stop)
    if s.logit_bias:
        out["logit_bias"] = {str(k): v for k, v in s.logit_bias.items()}
    if s.grammar:
        out["grammar"] = s.grammar
    if s.ignore_eos:
        out["ignore_eos"] = True
    return out


def _call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments or "{}"},
    }


def message_json(m: ChatMessage) -> dict[str, Any]:
    """One message as chat completions take it (images as ``image_url`` parts)."""
    content: Any = m.content
    if m.images:
        parts = [{"type": "text", "text": m.content}] if m.content else []
        content = parts + [{"type": "image_url", "image_url": {"url": u}} for u in m.images]
    out: dict[str, Any] = {"role": m.role}
    if m.role == "assistant":
        out["content"] = content if content or not m.tool_calls else None
        if m.tool_calls:
            out["tool_calls"] = [_call_json(c) for c in m.tool_calls]
        if m.reasoning:
            out["reasoning_content"] = m.reasoning
        return out
    out["content"] = content if content is not None else ""
    if m.role == "tool":
        if m.tool_call_id:
            out["tool_call_id"] = m.tool_call_id
        if m.name:
            out["name"] = m.name
    return out


def _tool_choice(choice: str | None) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(fmt: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's response_format; a json_schema without a name gets one (vLLM requires it)."""
    out = dict(fmt)
    schema = out.get("json_schema")
    if out.get("type") == "json_schema" and isinstance(schema, Mapping) and "name" not in schema:
        out["json_schema"] = {"name": "response", **schema}
    return out


def _reasoning(r: Reasoning) -> dict[str, Any]:
    """``reasoning_effort`` (OpenAI's field; gpt-oss on vLLM), and thinking on or off through
    the chat template's ``enable_thinking`` (Qwen3 and others on vLLM, SGLang, llama-server)."""
    out: dict[str, Any] = {}
    if r.effort:
        out["reasoning_effort"] = r.effort
    if r.enabled is not None:
        out["chat_template_kwargs"] = {"enable_thinking": r.enabled}
    return out


def chat_body(request: ChatRequest, model: str, max_tokens: int | None) -> dict[str, Any]:
    """A streamed chat completion for ``model`` (the upstream's id). ``max_tokens`` None
    leaves the limit to the upstream (what is left of its context)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [message_json(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_fields(request.sampling),
        **_reasoning(request.reasoning),
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters) or {"type": "object", "properties": {}},
                },
            }
            for t in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    return body


def completion_body(
    request: CompletionRequest, model: str, max_tokens: int | None
) -> dict[str, Any]:
    """A streamed raw completion (no chat template; FIM through ``suffix`` where supported)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_fields(request.sampling),
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if request.suffix:
        body["suffix"] = request.suffix
    return body


def embeddings_body(model: str, texts: list[str]) -> dict[str, Any]:
    return {"model": model, "input": texts, "encoding_format": "float"}
