"""Ollama's API (/api/*) on the real server, with the official `ollama` client, on the tiny GGUF
(and Gemma 3 270M's header for /api/show): the NDJSON wire, model listings, chat, generate
(template, raw, fill-in-the-middle), embeddings, load and unload, and errors in Ollama's
shape."""

from __future__ import annotations

import json
import math
import re
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ollama
import pytest

pytest.importorskip("llama_cpp")

HELLO = [{"role": "user", "content": "hello"}]
FIM_MARKERS = "<|fim_prefix|><|fim_suffix|><|fim_middle|>"
# How Continue reads each line of /api/show's `parameters` (core/llm/llms/Ollama.ts).
CONTINUE_PARAMETER = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')


def api(url: str) -> ollama.Client:
    return ollama.Client(host=url, timeout=120)


def call(
    url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    """Every line one JSON object, and nothing else on the wire."""
    text = raw.decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text[:-1].split("\n")]


def test_version_is_one_codex_oss_accepts(tiny_server: str) -> None:
    status, _, raw = call(tiny_server, "GET", "/api/version")
    version = tuple(int(p) for p in json.loads(raw)["version"].split("."))
    assert status == 200 and version >= (0, 13, 4)


def test_tags_list_every_model_with_ollama_details(tiny_server: str) -> None:
    listed = {m.model: m for m in api(tiny_server).list().models}
    assert {"tiny", "gemma3:270m"} <= set(listed)
    tiny = listed["tiny"]
    assert tiny.details is not None and tiny.size and tiny.digest and tiny.modified_at
    assert (tiny.details.format, tiny.details.family) == ("gguf", "llama")
    assert tiny.details.quantization_level == "F32"
    assert re.fullmatch(r"\d+\.\d+[MB]", tiny.details.parameter_size or "")
    gemma = listed["gemma3:270m"].details
    assert gemma is not None and gemma.family == "gemma3" and gemma.quantization_level


def test_show_gives_the_served_context_first_and_the_trained_one_as_ollama(
    tiny_server: str,
) -> None:
    shown = api(tiny_server).show("tiny")
    info = dict(shown.modelinfo or {})
    first = next(k for k in info if "context_length" in k)  # how Roo Code finds it
    assert (first, info[first]) == ("impetus.context_length", 2048)
    assert info["llama.context_length"] == 4096  # the trained maximum, as Ollama reports it
    assert info["general.architecture"] == "llama" and info["llama.block_count"] == 2
    lines = (shown.parameters or "").splitlines()
    assert "num_ctx 2048" in lines and 'stop "<|im_end|>"' in lines
    assert all(CONTINUE_PARAMETER.match(line) for line in lines)
    assert shown.details is not None and shown.details.family == "llama"


def test_show_says_the_tiny_model_fills_in_the_middle_loaded_or_not(tiny_server: str) -> None:
    client = api(tiny_server)
    client.chat(model="tiny", messages=[], keep_alive=0)  # not loaded
    cold = client.show("tiny")
    client.chat(model="tiny", messages=[])  # loaded: the engine answers
    warm = client.show("tiny")
    for shown in (cold, warm):
        assert shown.capabilities == ["completion", "tools", "insert"]
        assert ".Suffix" in (shown.template or "") and "<|fim_prefix|>" in (shown.template or "")
    assert (cold.modelinfo or {})["impetus.loaded"] is False
    assert (warm.modelinfo or {})["impetus.loaded"] is True


def test_show_of_the_base_gemma_model_reads_its_file_without_loading_it(tiny_server: str) -> None:
    status, _, raw = call(tiny_server, "POST", "/api/show", {"name": "gemma3:270m"})
    body = json.loads(raw)
    assert status == 200
    assert body["capabilities"] == ["completion"]  # a base model: no tools, no FIM tokens
    assert body["model_info"]["gemma3.context_length"] == 32768
    assert "start_of_turn" in body["template"] and ".Suffix" not in body["template"]
    loaded = [m.model for m in api(tiny_server).ps().models]
    assert "gemma3:270m" not in loaded


def test_chat_streams_ndjson_ending_with_the_counts(tiny_server: str) -> None:
    body = {"model": "tiny", "messages": HELLO, "options": {"num_predict": 6, "temperature": 0}}
    status, headers, raw = call(tiny_server, "POST", "/api/chat", body)
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    lines = ndjson(raw)
    *pieces, last = lines
    assert pieces and all(
        p["done"] is False and p["message"]["role"] == "assistant" for p in pieces
    )
    assert last["done"] is True and last["done_reason"] == "length"
    assert last["eval_count"] == 6 and last["prompt_eval_count"] > 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[key], int) and last[key] >= 0
    assert last["total_duration"] >= last["eval_duration"]
    assert all(datetime.fromisoformat(x["created_at"]).tzinfo == UTC for x in lines)


def test_chat_with_the_official_client_streamed_and_whole(tiny_server: str) -> None:
    client = api(tiny_server)
    options = {"num_predict": 8, "temperature": 0, "seed": 7}
    whole = client.chat(model="tiny", messages=HELLO, options=options)
    parts = list(client.chat(model="tiny", messages=HELLO, options=options, stream=True))
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 8
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == 8


def test_a_latest_tag_names_the_untagged_model(tiny_server: str) -> None:
    reply = api(tiny_server).chat(
        model="tiny:latest", messages=HELLO, options={"num_predict": 2}, keep_alive="5m"
    )
    assert reply.model == "tiny:latest" and reply.done


def test_generate_applies_the_template_unless_raw(tiny_server: str) -> None:
    client = api(tiny_server)
    options = {"num_predict": 1}
    raw = client.generate(model="tiny", prompt=FIM_MARKERS, raw=True, options=options)
    assert raw.prompt_eval_count == 4  # BOS + three control tokens: no template
    templated = client.generate(model="tiny", prompt=FIM_MARKERS, options=options)
    with_system = client.generate(
        model="tiny", prompt=FIM_MARKERS, system="Be brief.", options=options
    )
    assert (templated.prompt_eval_count or 0) > 4
    assert (with_system.prompt_eval_count or 0) > (templated.prompt_eval_count or 0)


def test_a_suffix_is_fill_in_the_middle_in_the_models_own_tokens(tiny_server: str) -> None:
    client = api(tiny_server)
    options = {"num_predict": 4, "temperature": 0}
    fim = client.generate(
        model="tiny", prompt="def add(a, b):", suffix="\nprint(1)", options=options
    )
    spelled = client.generate(
        model="tiny",
        prompt="<|fim_prefix|>def add(a, b):<|fim_suffix|>\nprint(1)<|fim_middle|>",
        raw=True,
        options=options,
    )
    assert fim.prompt_eval_count == spelled.prompt_eval_count
    assert fim.response == spelled.response


def test_images_are_refused_clearly(tiny_server: str) -> None:
    pixel = (  # a 1x1 PNG
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
    client = api(tiny_server)
    with pytest.raises(ollama.ResponseError) as templated:
        client.generate(model="tiny", prompt="what is this?", images=[pixel])
    assert templated.value.status_code == 400 and "image" in templated.value.error
    with pytest.raises(ollama.ResponseError) as raw:
        client.generate(model="tiny", prompt="x", images=[pixel], raw=True)
    assert raw.value.status_code == 400 and "raw" in raw.value.error
    with pytest.raises(ollama.ResponseError) as chat:
        client.chat(model="tiny", messages=[{**HELLO[0], "images": [pixel]}])
    assert chat.value.status_code == 400 and "image" in chat.value.error


def test_the_same_seed_gives_the_same_reply_and_stop_strings_cut_it(tiny_server: str) -> None:
    client = api(tiny_server)
    options = {"num_predict": 12, "temperature": 1.0, "seed": 42, "top_k": 100, "top_p": 1.0}
    first = client.generate(model="tiny", prompt="the", raw=True, options=options)
    again = client.generate(model="tiny", prompt="the", raw=True, options=options)
    assert first.response == again.response and first.response
    stop = (first.response or "")[3:5]
    cut = client.generate(model="tiny", prompt="the", raw=True, options={**options, "stop": [stop]})
    assert stop not in (cut.response or "") and cut.done_reason == "stop"


def test_logprobs_come_with_each_token(tiny_server: str) -> None:
    reply = api(tiny_server).chat(
        model="tiny",
        messages=HELLO,
        options={"num_predict": 4, "temperature": 0},
        logprobs=True,
        top_logprobs=2,
    )
    entries = reply.logprobs or []
    assert len(entries) == reply.eval_count == 4
    for e in entries:
        top = e.top_logprobs or []
        assert len(top) == 2 and math.isclose(top[0].logprob, e.logprob, rel_tol=1e-5)


def test_embed_and_the_older_embeddings(tiny_server: str) -> None:
    client = api(tiny_server)
    both = client.embed(model="tiny", input=["a cat", "a dog"])
    assert len(both.embeddings) == 2 and all(len(v) == 64 for v in both.embeddings)
    assert both.prompt_eval_count and both.prompt_eval_count > 0
    short = client.embed(model="tiny", input="a cat", dimensions=8)
    assert len(short.embeddings[0]) == 8
    assert math.isclose(sum(v * v for v in short.embeddings[0]), 1.0, rel_tol=1e-4)
    assert client.embed(model="tiny", input=[]).embeddings == []
    older = client.embeddings(model="tiny", prompt="a cat")
    assert list(older.embedding) == pytest.approx(list(both.embeddings[0]), rel=1e-4)


def test_ps_lists_the_loaded_model_with_its_context_and_expiry(tiny_server: str) -> None:
    client = api(tiny_server)
    client.generate(model="tiny", prompt="hi", options={"num_predict": 1})
    entry = next(m for m in client.ps().models if m.model == "tiny")
    assert entry.context_length == 2048 and entry.size and entry.expires_at
    assert entry.expires_at > datetime.now(UTC)  # the test server keeps models (-1)


def test_empty_messages_load_and_keep_alive_zero_unloads(tiny_server: str) -> None:
    client = api(tiny_server)
    loaded = client.chat(model="tiny", messages=[])
    assert loaded.done and loaded.done_reason == "load"
    assert "tiny" in [m.model for m in client.ps().models]
    gone = client.generate(model="tiny", prompt="", keep_alive=0)
    assert gone.done_reason == "unload" and gone.response == ""
    assert "tiny" not in [m.model for m in client.ps().models]
    client.generate(model="tiny", prompt="hi", options={"num_predict": 1}, keep_alive="0s")
    assert "tiny" not in [m.model for m in client.ps().models]  # unloaded after its reply


def test_errors_are_ollama_shaped_with_their_status(tiny_server: str) -> None:
    cases = [
        ("POST", "/api/chat", {"model": "nope", "messages": HELLO}, 404, "nope"),
        (
            "POST",
            "/api/chat",
            {"model": "tiny", "messages": HELLO, "options": {"temperature": "hot"}},
            400,
            "options.temperature",
        ),
        (
            "POST",
            "/api/generate",
            {"model": "tiny", "prompt": "x", "think": "maybe"},
            400,
            "think",
        ),
        (
            "POST",
            "/api/generate",
            {"model": "tiny", "prompt": "x", "template": "{{ .Prompt }}"},
            400,
            "raw",
        ),
        ("POST", "/api/chat", {"model": "tiny", "messages": HELLO, "stream": "yes"}, 400, "stream"),
        ("POST", "/api/chat", b"{not json", 400, "JSON"),
        ("POST", "/api/copy", {"source": "tiny", "destination": "t2"}, 400, "import"),
        ("POST", "/api/show", {"model": "nope"}, 404, "nope"),
        ("POST", "/api/generate", {"model": "nope", "keep_alive": 0}, 404, "nope"),
        ("GET", "/api/chat", None, 405, "GET"),
        ("GET", "/api/nothing", None, 404, "/api/nothing"),
    ]
    for method, path, body, status, words in cases:
        got, _, raw = call(tiny_server, method, path, body)
        answer = json.loads(raw)
        assert got == status and list(answer) == ["error"], (path, body, answer)
        assert isinstance(answer["error"], str) and words in answer["error"], answer


def test_an_over_long_prompt_is_a_400_before_any_byte(tiny_server: str) -> None:
    long = [{"role": "user", "content": "the " * 3000}]
    status, headers, raw = call(
        tiny_server, "POST", "/api/chat", {"model": "tiny", "messages": long}
    )
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert "maximum context length is 2048 tokens" in json.loads(raw)["error"]


def test_a_smaller_num_ctx_bounds_the_request(tiny_server: str) -> None:
    prompt = [{"role": "user", "content": "the " * 200}]
    client = api(tiny_server)
    fits = client.chat(model="tiny", messages=prompt, options={"num_predict": 1})
    assert fits.done
    with pytest.raises(ollama.ResponseError) as small:
        client.chat(model="tiny", messages=prompt, options={"num_ctx": 64, "num_predict": 1})
    assert small.value.status_code == 400 and "maximum context length is 64" in small.value.error


def test_the_tiny_mlx_model_through_ollamas_api(tiny_mlx_dir: Path) -> None:
    pytest.importorskip("mlx_lm")
    from impetus_cli.runtime.manager import ModelManager
    from tests.fixtures.servers import Registry, server_settings, start_server

    settings = server_settings()
    manager = ModelManager(settings, store=Registry({"tiny-mlx": tiny_mlx_dir}), allow_paths=False)
    with start_server(manager, settings) as url:
        client = api(url)
        cold = client.show("tiny-mlx")
        assert cold.capabilities == ["completion", "tools", "insert"]  # from tokenizer.json
        options = {"num_predict": 5, "temperature": 0}
        parts = list(client.chat(model="tiny-mlx", messages=HELLO, options=options, stream=True))
        assert parts[-1].done and parts[-1].eval_count == 5
        assert client.show("tiny-mlx").capabilities == cold.capabilities  # the engine agrees
        fim = client.generate(model="tiny-mlx", prompt="def f(", suffix=")\n", options=options)
        assert fim.done and fim.prompt_eval_count
        embedded = client.embed(model="tiny-mlx", input="hello")
        assert len(embedded.embeddings[0]) == 64


def test_gemma_answers_through_the_official_client(tiny_server: str) -> None:
    client = api(tiny_server)
    options = {"num_predict": 12, "temperature": 0}
    ask = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi!"}]
    parts = list(client.chat(model="gemma3:270m", messages=ask, options=options, stream=True))
    whole = client.chat(model="gemma3:270m", messages=ask, options=options)
    text = "".join(p.message.content or "" for p in parts)
    assert text.strip() and text == whole.message.content
    assert parts[-1].done_reason in ("stop", "length") and parts[-1].prompt_eval_count
    prompt = "The capital of France is"
    completion = client.generate(model="gemma3:270m", prompt=prompt, raw=True, options=options)
    assert completion.response and completion.eval_count
