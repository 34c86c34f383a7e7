"""OpenAI chat completions and legacy completions: the runtime's stream -> JSON and SSE.

Streams are ``data: <json>`` lines with ``data: [DONE]`` last, no ``event:`` field and no
``: ping`` comments (Continue's parser takes a comment for the end of the stream); a failure
after the stream began is sent as ``data: {"error": ...}``.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.summary import StreamSummary
from impetus_cli.runtime.types import GenerationChunk, ToolCall, ToolCallDelta
from impetus_cli.server.http import dumps

TokenBytes = Callable[[int], bytes]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else dumps(data)}\n\n".encode()


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_of(exc: ImpetusError) -> dict[str, Any]:
    return error_body(exc.message, exc.type, exc.code, exc.param)


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
    cache, evaluated, and generated, with their speeds, and with speculative decoding the
    tokens drafted and accepted."""
    f = final or GenerationChunk()
    evaluated = f.prompt_tokens - f.cached_tokens
    drafts = (  # speculative decoding, as llama-server reports it: only when it drafted
        {"draft_n": f.drafted_tokens, "draft_n_accepted": f.accepted_tokens}
        if f.drafted_tokens
        else {}
    )
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
        **drafts,
    }


def _token(token: int, logprob: float, piece: TokenBytes) -> dict[str, Any]:
    raw = piece(token)
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def _entries(chunks: Sequence[GenerationChunk]) -> list[tuple[int, float, Any]]:
    out = []
    for c in chunks:
        tops = c.top_logprobs or [()] * len(c.logprobs)
        out += list(zip(c.token_ids, c.logprobs, tops, strict=False))
    return out


def chat_logprobs(chunks: Sequence[GenerationChunk], piece: TokenBytes) -> dict[str, Any]:
    """``choices[].logprobs`` of the chat API for the tokens of ``chunks``."""
    content = []
    for token, lp, top in _entries(chunks):
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
    for token, lp, top in _entries(chunks):
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


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments or "{}"},
    }


def tool_call_delta(d: ToolCallDelta) -> dict[str, Any]:
    """A streamed piece of a call: the first carries id, type and name (every entry has a
    ``function`` object, as Continue and Cline expect)."""
    if d.id is not None:
        fn = {"name": d.name or "", "arguments": d.arguments}
        return {"tool_calls": [{"index": d.index, "id": d.id, "type": "function", "function": fn}]}
    return {"tool_calls": [{"index": d.index, "function": {"arguments": d.arguments}}]}


class ChatRenderer:
    """One chat completion, whole or as ``chat.completion.chunk`` events."""

    media_type = "text/event-stream"

    def __init__(
        self,
        model: str,
        prompt_tokens: int,
        piece: TokenBytes,
        *,
        logprobs: bool,
        include_usage: bool = False,
    ):
        self.id, self.model, self.prompt_tokens = new_id("chatcmpl"), model, prompt_tokens
        self.piece, self.logprobs, self.include_usage = piece, logprobs, include_usage
        self.keep_chunks = logprobs
        self.created = int(time.time())

    def _chunk(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }

    def start(self) -> list[bytes]:
        return [sse(self._chunk({"role": "assistant", "content": ""}))]

    def chunk(self, chunk: GenerationChunk) -> list[bytes]:
        out = []
        if chunk.reasoning:  # its own delta: Continue reads only the first field of a delta
            out.append(sse(self._chunk({"reasoning_content": chunk.reasoning})))
        logprobs = chat_logprobs([chunk], self.piece) if chunk.logprobs else None
        if chunk.text or logprobs:
            out.append(sse(self._chunk({"content": chunk.text}, None, logprobs)))
        out += [sse(self._chunk(tool_call_delta(d))) for d in chunk.tool_call_deltas]
        return out

    def end(self, summary: StreamSummary) -> list[bytes]:
        last = self._chunk({}, summary.finish_reason)
        last["timings"] = timings(summary.final)
        out = [sse(last)]
        if self.include_usage:
            out.append(
                sse(
                    usage_chunk(
                        self.id,
                        self.model,
                        "chat.completion.chunk",
                        self.prompt_tokens,
                        summary.final,
                    )
                )
            )
        return [*out, sse("[DONE]")]

    def error(self, exc: ImpetusError) -> list[bytes]:
        return [sse(error_of(exc))]

    def heartbeat(self) -> list[bytes]:
        return []

    def body(self, summary: StreamSummary) -> dict[str, Any]:
        calls = summary.tool_calls
        message: dict[str, Any] = {
            "role": "assistant",
            "content": (summary.text or None) if calls else summary.text,
        }
        if calls:
            message["tool_calls"] = [tool_call_json(c) for c in calls]
        if summary.reasoning:
            message["reasoning_content"] = summary.reasoning
        logprobs = chat_logprobs(summary.chunks, self.piece) if self.logprobs else None
        f = summary.final or GenerationChunk()
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": summary.finish_reason,
                }
            ],
            # A remote model's prompt size is known only from its final chunk (runtime/remote).
            "usage": usage(
                f.prompt_tokens or self.prompt_tokens, f.completion_tokens, f.cached_tokens
            ),
            "timings": timings(summary.final),
        }


class CompletionRenderer:
    """One legacy completion (``text_completion``), whole or streamed."""

    media_type = "text/event-stream"

    def __init__(
        self,
        model: str,
        prompt_tokens: int,
        piece: TokenBytes,
        *,
        logprobs: bool,
        include_usage: bool = False,
    ):
        self.id, self.model, self.prompt_tokens = new_id("cmpl"), model, prompt_tokens
        self.piece, self.logprobs, self.include_usage = piece, logprobs, include_usage
        self.keep_chunks = logprobs
        self.created = int(time.time())
        self.sent = 0  # characters streamed so far, for text_offset

    def _chunk(
        self, text: str, finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        }

    def start(self) -> list[bytes]:
        return []

    def chunk(self, chunk: GenerationChunk) -> list[bytes]:
        logprobs = completion_logprobs([chunk], self.piece, self.sent) if chunk.logprobs else None
        if not (chunk.text or logprobs):
            return []
        self.sent += len(chunk.text)
        return [sse(self._chunk(chunk.text, None, logprobs))]

    def end(self, summary: StreamSummary) -> list[bytes]:
        last = self._chunk("", summary.finish_reason)
        last["timings"] = timings(summary.final)
        out = [sse(last)]
        if self.include_usage:
            out.append(
                sse(
                    usage_chunk(
                        self.id, self.model, "text_completion", self.prompt_tokens, summary.final
                    )
                )
            )
        return [*out, sse("[DONE]")]

    def error(self, exc: ImpetusError) -> list[bytes]:
        return [sse(error_of(exc))]

    def heartbeat(self) -> list[bytes]:
        return []

    def body(self, summary: StreamSummary) -> dict[str, Any]:
        logprobs = completion_logprobs(summary.chunks, self.piece) if self.logprobs else None
        f = summary.final or GenerationChunk()
        out = self._chunk(summary.text, summary.finish_reason, logprobs)
        out["usage"] = usage(
            f.prompt_tokens or self.prompt_tokens, f.completion_tokens, f.cached_tokens
        )
        out["timings"] = timings(summary.final)
        return out


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
        "usage": usage(f.prompt_tokens or prompt, f.completion_tokens, f.cached_tokens),
        "timings": timings(final),
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
