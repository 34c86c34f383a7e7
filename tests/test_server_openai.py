"""The server as the official OpenAI client and the coding assistants use it (CLIENTS.md)."""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
import urllib.request
from typing import Any

import openai
import pytest

pytest.importorskip("llama_cpp")

CLINE_SYSTEM = "You are Cline, a highly skilled software engineer. " * 40


def client(url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=url + "/v1", api_key=kw.pop("api_key", "sk-anything"), max_retries=0, **kw
    )


def raw_post(
    url: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert "\nevent:" not in text and not text.startswith("event:")
    assert ": ping" not in text
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    return [b[len("data: ") :] for b in blocks]


def test_models_list_has_openai_shape_and_context_length(tiny_server: str) -> None:
    models = client(tiny_server).models.list()
    ids = [m.id for m in models.data]
    assert {"tiny", "gemma3:270m"} <= set(ids)
    status, _, body = raw_post(tiny_server, "/v1/models", b"")  # POST: not allowed
    assert status == 405 and json.loads(body)["error"]["type"]
    with urllib.request.urlopen(tiny_server + "/v1//models") as reply:  # trailing-slash base URL
        data = json.loads(reply.read())
    entry = next(m for m in data["data"] if m["id"] == "tiny")
    assert (
        entry["object"] == "model" and entry["context_length"] == 2048 and entry["format"] == "gguf"
    )


def test_chat_non_streaming(tiny_server: str) -> None:
    reply = client(tiny_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert (
        reply.usage.prompt_tokens > 0
        and reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    )


def test_stream_ends_with_one_usage_chunk_then_done(tiny_server: str) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "max_tokens": 6,
    }
    status, headers, raw = raw_post(
        tiny_server, "/v1/chat/completions", body, {"Accept": "application/json"}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    with_usage = [c for c in chunks if "usage" in c]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and with_usage[0]["choices"] == []
    assert all(
        c["object"] == "chat.completion.chunk" and isinstance(c["choices"], list) for c in chunks
    )
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert sum(c["choices"][0]["delta"].get("content") is not None for c in chunks[:-1]) >= 1


def test_stream_without_include_usage_has_no_usage(tiny_server: str) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 4,
    }
    events = sse_events(raw_post(tiny_server, "/v1/chat/completions", body)[2])
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_gemma_chat_streams_a_reply_with_the_official_client(tiny_server: str) -> None:
    stream = client(tiny_server).chat.completions.create(
        model="gemma3:270m",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name a colour."},
        ],
        stream=True,
        max_tokens=16,
        temperature=0,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text.strip() and usage is not None and usage.completion_tokens > 0


def test_cline_request_replayed_counts_the_system_prompt(tiny_server: str) -> None:
    """CLIENTS.md's Cline request: parts, stream_options, temperature 0, any bearer key."""
    messages = [
        {"role": "system", "content": CLINE_SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<task>\nAdd a /health endpoint\n</task>"},
                {
                    "type": "text",
                    "text": "<environment_details>\nserver.py\n</environment_details>",
                },
            ],
        },
    ]
    c = client(tiny_server, default_headers={"User-Agent": "Cline/3.17.0"})
    stream = c.chat.completions.create(
        model="tiny",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=4,
    )
    usage = next(ch.usage for ch in stream if ch.usage)
    alone = c.chat.completions.create(model="tiny", messages=messages[1:], max_tokens=1).usage
    assert (
        usage.prompt_tokens > alone.prompt_tokens + 300
    )  # the system prompt was counted, not dropped


def test_unknown_fields_are_ignored(tiny_server: str) -> None:
    body = {
        "model": "tiny",
        "user": "u1",
        "reasoning_effort": "low",
        "parallel_tool_calls": False,
        "prediction": {"type": "content", "content": "x"},
        "max_completion_tokens": 3,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": "again"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "hmm",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
    }
    status, _, raw = raw_post(tiny_server, "/v1/chat/completions", body)
    assert status == 200, raw


def test_unknown_model_is_404_naming_the_available_ones(tiny_server: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(tiny_server).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    error = info.value.body
    assert error["code"] == "model_not_found" and "tiny" in error["message"]


def test_path_like_model_ids_are_refused_over_http(tiny_server: str, tiny_gguf: Any) -> None:
    for model in (str(tiny_gguf), "../../etc/passwd", "~/model.gguf"):
        status, _, raw = raw_post(
            tiny_server,
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "x"}]},
        )
        assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"


def test_over_long_prompt_is_400_before_any_byte_is_streamed(tiny_server: str) -> None:
    body = {
        "model": "tiny",
        "stream": True,
        "messages": [{"role": "user", "content": "the " * 5000}],
    }
    status, headers, raw = raw_post(tiny_server, "/v1/chat/completions", body)
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    assert error["message"].startswith(
        "This model's maximum context length is 2048 tokens. However, your messages resulted in "
    )


def test_max_tokens_beyond_the_room_left_is_clamped(tiny_server: str) -> None:
    reply = client(tiny_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "the " * 1900}],
        max_tokens=100_000,
        temperature=0,
    )
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= 2048


def test_completions_with_fim_prompt_and_nine_stop_strings(tiny_server: str) -> None:
    prompt = "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))<|fim_middle|>"
    reply = client(tiny_server).completions.create(
        model="tiny",
        prompt=prompt,
        max_tokens=12,
        temperature=0,
        stop=[
            "\n\n",
            "<|endoftext|>",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            "```",
            "\ndef",
            "\nclass",
            "/src/",
        ],
    )
    assert reply.object == "text_completion" and isinstance(reply.choices[0].text, str)
    markers = client(tiny_server).completions.create(
        model="tiny", prompt="<|fim_prefix|><|fim_suffix|><|fim_middle|>", max_tokens=1
    )
    assert (
        markers.usage.prompt_tokens == 4
    )  # BOS + three control tokens: no template, markers parsed


def test_completions_stream(tiny_server: str) -> None:
    stream = client(tiny_server).completions.create(
        model="tiny", prompt="the", max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_embeddings_base64_are_decoded_by_the_client(tiny_server: str) -> None:
    reply = client(tiny_server).embeddings.create(
        model="tiny", input=["hello world", "the end"], encoding_format="base64"
    )
    assert len(reply.data) == 2
    raw = reply.data[0].embedding
    vector = (
        struct.unpack(f"<{len(base64.b64decode(raw)) // 4}f", base64.b64decode(raw))
        if isinstance(raw, str)
        else raw
    )
    assert len(vector) == 64 and abs(sum(x * x for x in vector) - 1) < 1e-3
    floats = client(tiny_server).embeddings.create(
        model="tiny", input="hello", encoding_format="float"
    )
    assert len(floats.data[0].embedding) == 64


def test_two_concurrent_streams_both_complete(tiny_server: str) -> None:
    results: list[str] = []

    def one(i: int) -> None:
        stream = client(tiny_server).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"number {i}"}],
            stream=True,
            max_tokens=10,
        )
        finish = [
            c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason
        ]
        results.append(finish[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) and all(r in ("stop", "length") for r in results) and len(results) == 2


def test_hang_up_mid_stream_then_the_next_request_is_answered(tiny_server: str) -> None:
    stream = client(tiny_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "go on forever"}],
        stream=True,
        max_tokens=1500,
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # the client hangs up
    reply = client(tiny_server, timeout=30).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_health_and_metrics(tiny_server: str) -> None:
    with urllib.request.urlopen(tiny_server + "/health") as reply:
        health = json.loads(reply.read())
    assert health["status"] == "ok" and "version" in health
    with urllib.request.urlopen(tiny_server + "/metrics") as reply:
        text = reply.read().decode()
    assert "impetus_requests_total" in text and "impetus_ttft_seconds_bucket" in text


def test_unknown_route_is_a_json_404(tiny_server: str) -> None:
    status, _, raw = raw_post(tiny_server, "/v1/nothing", {})
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"


# -- logprobs, cached tokens, timings ---------------------------------------------------------


def test_chat_logprobs_streamed_and_not(tiny_server: str) -> None:
    messages = [{"role": "user", "content": "log probabilities"}]
    ask = {"max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    reply = client(tiny_server).chat.completions.create(model="tiny", messages=messages, **ask)
    content = reply.choices[0].logprobs.content
    assert 1 <= len(content) <= reply.usage.completion_tokens
    for entry in content:
        assert math.exp(entry.logprob) <= 1
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the pick is the best
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob)
    assert "".join(e.token for e in content) == reply.choices[0].message.content
    stream = client(tiny_server).chat.completions.create(
        model="tiny", messages=messages, stream=True, **ask
    )
    streamed = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    # The same tokens; the numbers only up to float noise (the second prompt comes from cache).
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)
    assert [len(e.top_logprobs) for e in streamed] == [3] * len(content)


def test_llama_server_sampling_extensions(tiny_server: str) -> None:
    # n_probs, as llama-server's clients ask for alternatives.
    ask = {"model": "tiny", "prompt": "the", "max_tokens": 3, "temperature": 0, "n_probs": 2}
    status, _, raw = raw_post(tiny_server, "/v1/completions", ask)
    assert status == 200, raw
    tops = json.loads(raw)["choices"][0]["logprobs"]["top_logprobs"]
    assert tops and all(len(top) == 2 for top in tops)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "dry"}], "max_tokens": 4}
    dry = {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2}
    dry |= {"dry_penalty_last_n": -1, "dry_sequence_breakers": ["\n", ":"], "typical_p": 0.9}
    status, _, raw = raw_post(tiny_server, "/v1/chat/completions", {**chat, **dry})
    assert status == 200, raw
    for wrong in ({"dry_sequence_breakers": "\n"}, {"dry_base": 0.5}, {"typical_p": 2}):
        status, _, raw = raw_post(
            tiny_server, "/v1/chat/completions", {**chat, "dry_multiplier": 1, **wrong}
        )
        assert status == 400 and json.loads(raw)["error"]["param"] == next(iter(wrong)), raw


def test_chat_logprobs_without_top_logprobs_list_no_alternatives(tiny_server: str) -> None:
    reply = client(tiny_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "just the pick"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
    )
    content = reply.choices[0].logprobs.content
    assert content and all(e.top_logprobs == [] and e.logprob <= 0 for e in content)
    plain = client(tiny_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2, temperature=0
    )
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),  # OpenAI requires logprobs: true with it
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": 3}, "logprobs"),  # chat takes a boolean; the number is top_logprobs
    ],
)
def test_bad_chat_logprobs_requests_are_400s(
    tiny_server: str, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], **extra}
    status, _, raw = raw_post(tiny_server, "/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param and error["type"] == "invalid_request_error"


def test_a_byte_token_reports_its_own_bytes(tiny_server: str) -> None:
    """Gemma spells a rare character as byte tokens: each entry's token is U+FFFD, its bytes are
    the real ones, and together they make the reply."""
    reply = client(tiny_server).chat.completions.create(
        model="gemma3:270m",
        messages=[{"role": "user", "content": "Repeat exactly: \U00013000\U00013001"}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = reply.choices[0].logprobs.content
    raw = b"".join(bytes(e.bytes) for e in content)
    assert raw.decode("utf-8", "replace") == reply.choices[0].message.content
    partial = [e for e in content if len(e.bytes) == 1 and e.bytes[0] >= 0x80]
    assert partial and all(e.token == "\ufffd" for e in partial)


def test_completion_logprobs_have_the_legacy_shape(tiny_server: str) -> None:
    ask: dict[str, Any] = {"prompt": "one two three", "max_tokens": 5, "temperature": 0}
    reply = client(tiny_server).completions.create(model="tiny", logprobs=2, **ask)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens) == reply.choices[0].text and lp.text_offset[0] == 0
    for token, value, offset, top in zip(
        lp.tokens, lp.token_logprobs, lp.text_offset, lp.top_logprobs, strict=True
    ):
        assert math.exp(value) <= 1
        assert reply.choices[0].text[offset:].startswith(token)
        # Keyed by text: two byte tokens that both print as U+FFFD share one key.
        values = list(top.values())
        assert 1 <= len(top) <= 2 and values == sorted(values, reverse=True)
        assert max(top, key=top.__getitem__) == token and math.isclose(values[0], value)
    stream = client(tiny_server).completions.create(model="tiny", logprobs=2, stream=True, **ask)
    parts = [c.choices[0].logprobs for c in stream if c.choices and c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [o for p in parts for o in p.text_offset] == lp.text_offset
    streamed = [v for p in parts for v in p.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-4)  # float noise: cached prompt


def test_completion_logprobs_zero_and_out_of_range(tiny_server: str) -> None:
    body = {"model": "tiny", "prompt": "one", "max_tokens": 3, "temperature": 0, "logprobs": 0}
    status, _, raw = raw_post(tiny_server, "/v1/completions", body)
    lp = json.loads(raw)["choices"][0]["logprobs"]
    assert status == 200 and lp["tokens"] and lp["top_logprobs"] == [{}] * len(lp["tokens"])
    for bad_value in (21, -1, True):
        status, _, raw = raw_post(tiny_server, "/v1/completions", {**body, "logprobs": bad_value})
        assert status == 400 and json.loads(raw)["error"]["param"] == "logprobs"


def test_a_follow_up_reports_its_cached_prompt_tokens(tiny_server: str) -> None:
    messages = [{"role": "system", "content": CLINE_SYSTEM}, {"role": "user", "content": "hi"}]
    c = client(tiny_server)
    first = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "and then?"},
    ]
    stream = c.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 8
    timings = next(
        c.model_extra["timings"] for c in chunks if c.choices and c.choices[0].finish_reason
    )
    assert timings["cache_n"] == usage.prompt_tokens_details.cached_tokens
    assert timings["prompt_n"] == usage.prompt_tokens - timings["cache_n"]


def test_ignore_eos_generates_exactly_max_tokens(tiny_server: str) -> None:
    base = {"model": "tiny", "prompt": "end", "max_tokens": 6, "temperature": 0}
    status, _, raw = raw_post(tiny_server, "/v1/completions", {**base, "logit_bias": {"2": 100}})
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 0  # EOS at once
    body = {**base, "logit_bias": {"2": 100}, "ignore_eos": True}
    status, _, raw = raw_post(tiny_server, "/v1/completions", body)
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 6
    status, _, raw = raw_post(tiny_server, "/v1/completions", {**base, "ignore_eos": "yes"})
    assert status == 400 and json.loads(raw)["error"]["param"] == "ignore_eos"
