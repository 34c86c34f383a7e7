"""Remote engines as pure functions: the settings, runtime requests -> the upstream's JSON,
the upstream's events -> GenerationChunks (in the shapes vLLM, SGLang, lmdeploy, llama-server
and impetus send), and its error bodies -> the errors a client sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from impetus_cli.errors import ConfigError, ContextLengthExceeded, ModelNotFound
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.remote import wire
from impetus_cli.runtime.remote.config import RemoteConfig, from_spec, parse_remotes
from impetus_cli.runtime.remote.errors import UpstreamError, UpstreamRejected, rejected
from impetus_cli.runtime.remote.stream import DONE, EventDecoder, Reader
from impetus_cli.runtime.remote.upstream import merge_contexts, parse_models
from impetus_cli.runtime.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Reasoning,
    SamplingParams,
    ToolCall,
    ToolSpec,
)

# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name", "url"),
    [
        ("http://gpu-box:8000", "gpu-box", "http://gpu-box:8000/v1"),
        ("http://gpu-box:8000/v1/", "gpu-box", "http://gpu-box:8000/v1"),
        ("lab=https://lab.example.com/openai/v1", "lab", "https://lab.example.com/openai/v1"),
        ("lm=http://127.0.0.1:1234", "lm", "http://127.0.0.1:1234/v1"),
        ("http://[::1]:8080", "1", "http://[::1]:8080/v1"),
    ],
)
def test_a_remote_spec_takes_the_url_with_or_without_v1(spec: str, name: str, url: str) -> None:
    config = from_spec(spec)
    assert (config.name, config.url) == (name, url)
    assert config.root == url.removesuffix("/v1")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("ftp://box", "Not an http(s) URL"),
        ("http://user:pw@box:8000", "must not carry credentials"),
        ("bad/name=http://box", "Bad remote name"),
        (["http://box:1", "http://box:2"], "Two remotes are named 'box'"),
        ([{"url": "http://box", "api_key_env": "sk-live-123"}], "must name an environment"),
        ([{"url": "http://box", "timeout": 0}], "positive number"),
        ([{"url": "http://box", "colour": "red"}], "Unknown key(s)"),
        ([{"name": "x"}], "needs a url"),
    ],
)
def test_bad_remotes_are_refused_clearly(raw: Any, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_remotes(raw)
    assert says in caught.value.message
    assert "sk-live-123" not in caught.value.message + (caught.value.hint or "")


def test_remotes_come_from_config_toml_the_environment_and_flags(
    impetus_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (impetus_home / "config.toml").write_text(
        '[[remote]]\nname = "gpu"\nurl = "http://gpu:8000"\napi_key_env = "GPU_KEY"\n'
        'models = ["qwen*"]\ntimeout = 120\n',
        encoding="utf-8",
    )
    (gpu,) = load_settings().remote
    assert gpu == RemoteConfig(
        "gpu", "http://gpu:8000/v1", api_key_env="GPU_KEY", models=("qwen*",), timeout=120.0
    )
    monkeypatch.setenv("IMPETUS_REMOTE", "a=http://a:1,http://b:2/v1")
    assert [r.name for r in load_settings().remote] == ["a", "b"]
    flags = load_settings({"remote": ["lm=http://127.0.0.1:1234"]}).remote
    assert [(r.name, r.url) for r in flags] == [("lm", "http://127.0.0.1:1234/v1")]


# -- requests -------------------------------------------------------------------------------

CALL = ToolCall("call_9", "get_weather", '{"city": "Paris"}')
CONVERSATION = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Weather?", images=("data:image/png;base64,iVBORw0KGgo=",)),
    ChatMessage("assistant", None, tool_calls=(CALL,), reasoning="They want weather."),
    ChatMessage("tool", "Sunny", tool_call_id="call_9", name="get_weather"),
)


def test_a_chat_request_becomes_the_upstreams_chat_completion() -> None:
    request = ChatRequest(
        model="gpu/qwen3",
        messages=CONVERSATION,
        sampling=SamplingParams(temperature=0.0, top_k=20, seed=3, stop=("</end>",)),
        tools=(ToolSpec("get_weather", "Weather in a city.", {"type": "object"}),),
        tool_choice="get_weather",
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        reasoning=Reasoning(enabled=False),
    )
    body = wire.chat_body(request, "Qwen/Qwen3-8B", 512)
    assert body["model"] == "Qwen/Qwen3-8B" and body["max_tokens"] == 512
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    system, user, assistant, tool = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert user["content"] == [
        {"type": "text", "text": "Weather?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
        "reasoning_content": "They want weather.",
    }
    assert tool == {
        "role": "tool",
        "content": "Sunny",
        "tool_call_id": "call_9",
        "name": "get_weather",
    }
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"]["json_schema"]["name"] == "response"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert (body["temperature"], body["top_k"], body["seed"], body["stop"]) == (
        0.0,
        20,
        3,
        ["</end>"],
    )
    # Settings left at the runtime's defaults are the upstream's to choose.
    assert not {"top_p", "min_p", "presence_penalty", "repeat_penalty"} & set(body)


def test_a_completion_keeps_its_raw_prompt_and_suffix() -> None:
    request = CompletionRequest(
        model="gpu/coder",
        prompt="def add(a, b):",
        suffix="\n\nprint(add(1, 2))",
        sampling=SamplingParams(ignore_eos=True, repeat_penalty=1.1),
    )
    body = wire.completion_body(request, "coder", None)
    assert body["prompt"] == "def add(a, b):" and body["suffix"] == "\n\nprint(add(1, 2))"
    assert "max_tokens" not in body and body["ignore_eos"] is True
    assert body["repeat_penalty"] == body["repetition_penalty"] == 1.1


# -- replies --------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def read(events: list[Any], kind: Any = "chat") -> tuple[list[Any], Any]:
    clock = iter(float(i) for i in range(1000))
    reader = Reader("gpu", kind, started=0.0, clock=lambda: next(clock))
    out = [c for e in events for c in reader.feed(e)]
    return out, reader.final()


def test_reasoning_text_and_usage_with_cached_tokens() -> None:
    out, final = read(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Think"}),
            chunk({"reasoning": "ing."}),  # vLLM's newer field name
            chunk({"content": "Blue"}),
            chunk({}, "stop"),
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 120,
                    "completion_tokens": 3,
                    "prompt_tokens_details": {"cached_tokens": 100},
                },
            },
        ]
    )
    assert (
        "".join(c.reasoning for c in out) == "Thinking." and "".join(c.text for c in out) == "Blue"
    )
    assert (final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("stop", 120, 3)
    assert final.cached_tokens == 100 and final.ttft_s > 0


def test_vllm_tool_call_deltas_become_ours_with_each_call_whole_once() -> None:
    out, final = read(
        [
            chunk({"tool_calls": [tc(0, "chatcmpl-tool-a", "get_weather", "")]}),
            chunk({"tool_calls": [tc(0, "", None, '{"city": ')]}),
            chunk({"tool_calls": [tc(0, "", None, '"Paris"}')]}),
            chunk({"tool_calls": [tc(1, "chatcmpl-tool-b", "get_time", '{"zone": "CET"}')]}),
            chunk({}, "tool_calls"),
        ]
    )
    deltas = [d for c in out for d in c.tool_call_deltas]
    assert [(d.index, d.id, d.name) for d in deltas if d.id] == [
        (0, "chatcmpl-tool-a", "get_weather"),
        (1, "chatcmpl-tool-b", "get_time"),
    ]
    assert "".join(d.arguments for d in deltas if d.index == 0) == '{"city": "Paris"}'
    whole = [c for chunk_ in out for c in chunk_.tool_calls] + list(final.tool_calls)
    assert [(c.id, c.name, json.loads(c.arguments)) for c in whole] == [
        ("chatcmpl-tool-a", "get_weather", {"city": "Paris"}),
        ("chatcmpl-tool-b", "get_time", {"zone": "CET"}),
    ]
    # The first call is whole before the second begins (Responses closes items in order).
    first_whole = next(i for i, c in enumerate(out) if c.tool_calls)
    second_start = next(
        i for i, c in enumerate(out) if any(d.index == 1 for d in c.tool_call_deltas)
    )
    assert first_whole < second_start
    assert final.finish_reason == "tool_calls" and final.completion_tokens == 4


def tc(index: int | None, id_: str | None, name: str | None, args: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    if index is not None:
        raw["index"] = index
    if id_ is not None:
        raw["id"] = id_
    return raw


def test_calls_numbered_zero_with_new_ids_are_separate_calls() -> None:
    # lmdeploy and SGLang: every call has index 0; SGLang repeats the id on each piece.
    out, final = read(
        [
            chunk({"tool_calls": [tc(0, "0", "a", "")]}),
            chunk({"tool_calls": [tc(0, "0", None, "{}")]}),
            chunk({"tool_calls": [tc(0, "1", "b", "")]}),
            chunk({"tool_calls": [tc(0, "1", None, '{"x": 1}')]}),
            chunk({}, "stop"),  # some servers say stop after calls
        ]
    )
    whole = [c for chunk_ in out for c in chunk_.tool_calls] + list(final.tool_calls)
    assert [(c.id, c.name, c.arguments) for c in whole] == [
        ("0", "a", "{}"),
        ("1", "b", '{"x": 1}'),
    ]
    assert final.finish_reason == "tool_calls"


def test_a_call_without_an_id_or_index_gets_one() -> None:
    out, final = read([chunk({"tool_calls": [tc(None, None, "f", {"a": 1})]}), chunk({}, "stop")])
    (delta,) = out[0].tool_call_deltas
    assert delta.id and delta.id.startswith("call_") and delta.arguments == '{"a": 1}'
    assert final.tool_calls[0].name == "f"


def test_a_whole_chat_completion_reads_as_one_event() -> None:
    body = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [tc(None, "c1", "f", '{"q": 2}')],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5},
    }
    _, final = read([body])
    assert final.tool_calls[0].arguments == '{"q": 2}' and final.prompt_tokens == 9


def test_llama_server_timings_fill_speeds_and_cache() -> None:
    _, final = read(
        [
            chunk({"content": "x"}),
            {
                **chunk({}, "length"),
                "usage": {"prompt_tokens": 50, "completion_tokens": 1},
                "timings": {"cache_n": 40, "prompt_per_second": 900.0, "predicted_per_second": 70},
            },
        ]
    )
    assert (final.finish_reason, final.cached_tokens) == ("length", 40)
    assert (final.prompt_tps, final.generation_tps) == (900.0, 70.0)


def test_a_completion_stream_reads_text() -> None:
    events = [{"choices": [{"index": 0, "text": "return a + b", "finish_reason": None}]}]
    out, final = read(
        [*events, {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}], "completion"
    )
    assert [c.text for c in out] == ["return a + b"] and final.finish_reason == "stop"


def test_an_error_event_mid_stream_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError) as caught:
        read([chunk({"content": "a"}), {"error": {"message": "CUDA out of memory"}}])
    assert "CUDA out of memory" in caught.value.message and caught.value.status == 502


def test_events_are_read_line_by_line_as_servers_send_them() -> None:
    decoder = EventDecoder("gpu")
    lines = [b": ping\n", b"event: message\n", b'data: {"a": 1}\n', b"\n", b'data: {"b":\n']
    lines += [b"data: 2}\n", b"\n", b"data: [DONE]\n", b"\n"]
    events = [e for line in lines for e in decoder.feed(line)]
    assert events == [{"a": 1}, {"b": 2}, DONE]
    with pytest.raises(UpstreamError):
        for line in (b"data: <html>\n", b"\n"):
            decoder.feed(line)


# -- models and errors ----------------------------------------------------------------------


def test_context_lengths_where_each_server_reports_them() -> None:
    listed = {
        "object": "list",
        "data": [
            {"id": "Qwen/Qwen3-8B", "max_model_len": 40960},  # vLLM, SGLang
            {"id": "model.gguf", "meta": {"n_ctx_train": 131072}},  # llama-server
            {"id": "tiny", "context_length": 2048},  # impetus
            {"id": "qwen3-coder-30b", "owned_by": "organization_owner"},  # LM Studio
            {"object": "model"},  # no id: skipped
        ],
    }
    models = parse_models(listed, ())
    assert [(m.id, m.context_length) for m in models] == [
        ("Qwen/Qwen3-8B", 40960),
        ("model.gguf", 131072),
        ("tiny", 2048),
        ("qwen3-coder-30b", None),
    ]
    lmstudio = {"data": [{"id": "qwen3-coder-30b", "loaded_context_length": 32768}]}
    assert merge_contexts(models, lmstudio)[3].context_length == 32768
    assert [m.id for m in parse_models(listed, ("qwen*", "tiny"))] == ["tiny", "qwen3-coder-30b"]


def test_upstream_errors_map_to_what_clients_act_on() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "bad top_k",
                "type": "BadRequestError",
                "param": "top_k",
                "code": 400,
            }
        }
    ).encode()
    error = rejected("gpu", 400, body, None)
    assert isinstance(error, UpstreamRejected)
    assert (error.status, error.message, error.param, error.code) == (
        400,
        "bad top_k",
        "top_k",
        "400",
    )
    vllm = b'{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you requested 5000 tokens (4500 in the messages, 500 in the completion).","type":"BadRequestError","code":400}'
    too_long = rejected("gpu", 400, vllm, None)
    assert isinstance(too_long, ContextLengthExceeded) and (too_long.n_ctx, too_long.n_prompt) == (
        4096,
        4500,
    )
    llama = b'{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":8192}}'
    assert isinstance(rejected("gpu", 400, llama, None), ContextLengthExceeded)
    assert isinstance(rejected("gpu", 404, b'{"error": "model not found"}', None), ModelNotFound)
    busy = rejected("gpu", 503, b"{}", "7")
    assert (busy.status, getattr(busy, "retry_after", None)) == (503, 7)
    crash = rejected("gpu", 500, b"Internal Server Error", None)
    assert (crash.status, crash.code) == (502, "upstream_error") and "500" in crash.message


def test_the_dashboard_shows_each_upstream_up_or_down() -> None:
    from impetus_cli.runtime.status import RemoteStatus, ServerStatus
    from impetus_cli.tui import widgets

    status = ServerStatus.from_json(
        ServerStatus(
            version="x",
            remotes=(
                RemoteStatus("gpu", "http://gpu:8000/v1", "up", ("gpu/a", "gpu/b"), in_flight=2),
                RemoteStatus(
                    "lab", "http://lab/v1", "down", (), "Connection refused", retry_in_s=4
                ),
            ),
        ).to_json()
    )
    text = widgets.legend(status).plain
    assert "gpu up 2 models, 2 in flight" in text
    assert "lab down (Connection refused, retry in 4s)" in text
    rows = widgets.local_rows(
        [
            {"id": "gpu/a", "owned_by": "remote:gpu", "status": "up"},
            {"id": "lab/c", "owned_by": "remote:lab", "status": "down"},
            {"id": "tiny", "owned_by": "impetus", "loaded": True},
        ]
    )
    assert [r[-1] for r in rows] == ["remote", "down", "loaded"]
