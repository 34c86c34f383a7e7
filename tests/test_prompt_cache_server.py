"""The prompt cache through a real server on the tiny GGUF, with the official OpenAI client: a
conversation pushed out of the only slot comes back with its prompt reported as cached, the
same after the server restarts, and /metrics and /impetus/status count each tier's hits."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.status import ServerStatus
from impetus_cli.tui.widgets import cache_lines
from tests.fixtures.servers import Registry, server_settings, start_server

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
openai = pytest.importorskip("openai")


def ask(url: str, messages: list[dict[str, str]]) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    return client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0
    )


def long_turn(topic: str) -> list[dict[str, str]]:
    text = f"{topic}. " + " ".join(f"line {i}: {topic} again." for i in range(14))
    return [{"role": "user", "content": text}]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return str(reply.read().decode())


def tiers(url: str) -> dict[str, dict[str, Any]]:
    (model,) = json.loads(get(f"{url}/impetus/status"))["models"]
    return {t["tier"]: t for t in model["cache_tiers"]}


def test_a_returning_conversation_is_cached_after_other_work_and_after_a_restart(
    tiny_gguf: Path,
) -> None:
    settings = server_settings()  # one slot
    conversation = long_turn("apples")
    with start_server(ModelManager(settings, store=Registry({"tiny": tiny_gguf})), settings) as url:
        first = ask(url, conversation)
        ask(url, long_turn("bananas"))  # takes the only slot
        conversation += [
            {"role": "assistant", "content": first.choices[0].message.content or ""},
            {"role": "user", "content": "And pears?"},
        ]
        back = ask(url, conversation)
        assert back.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 4
        assert tiers(url)["ram"]["hits"] == 1
        status = ServerStatus.from_json(json.loads(get(f"{url}/impetus/status")))
        (line,) = cache_lines(status)  # the dashboard's line for the model
        assert (
            line.plain.startswith("prompt cache tiny") and " RAM 2 · " in line.plain
        )  # A and B, each left its slot once
        assert "1 hits" in line.plain and " DISK " in line.plain
        metrics = get(f"{url}/metrics")
        assert 'impetus_prompt_cache_hits{model="tiny",tier="ram"} 1.0' in metrics
        assert 'impetus_prompt_cache_entries{model="tiny",tier="disk"}' in metrics
    # the server stopped: its model unloaded and saved what it held to disk
    assert list((settings.prompt_cache_dir).glob("*/*.kv"))
    with start_server(ModelManager(settings, store=Registry({"tiny": tiny_gguf})), settings) as url:
        conversation += [
            {"role": "assistant", "content": back.choices[0].message.content or ""},
            {"role": "user", "content": "And plums?"},
        ]
        again = ask(url, conversation)
        assert again.usage.prompt_tokens_details.cached_tokens >= back.usage.prompt_tokens - 4
        assert tiers(url)["disk"]["hits"] == 1
