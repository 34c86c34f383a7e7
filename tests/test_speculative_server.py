"""Speculative decoding as a user sees it, through a real server with the official client: the
plan counts the draft model, the stream's ``timings`` say how many tokens were drafted and
accepted (llama-server's ``draft_n`` / ``draft_n_accepted``), and /metrics, /impetus/status
and the dashboard's throughput panel add them up per model."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.status import ServerStatus
from impetus_cli.runtime.types import LocalModel
from tests.fixtures.servers import Registry, server_settings, start_server

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


@pytest.fixture(scope="module")
def drafting_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tiny`, drafted for by `tiny-twin` (its own weights in another file: right every time),
    and `plain`, the same file with speculation off for the comparison."""
    twin = Path(shutil.copy(tiny_gguf, tmp_path_factory.mktemp("twin") / "twin.gguf"))
    settings = server_settings(speculative="tiny-twin")
    store = Registry({"tiny": tiny_gguf, "tiny-twin": twin})
    manager = ModelManager(settings, store=store, allow_paths=False)
    with start_server(manager, settings) as url:
        yield url


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as reply:
        return json.loads(reply.read())


def test_the_stream_reports_drafted_and_accepted_tokens_and_the_server_adds_them_up(
    drafting_server: str,
) -> None:
    client = openai.OpenAI(base_url=f"{drafting_server}/v1", api_key="x", max_retries=0)
    stream = client.completions.create(
        model="tiny",
        prompt="the water was hot and the man said",
        max_tokens=64,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    timings = next(c.model_extra["timings"] for c in chunks if c.model_extra.get("timings"))
    assert timings["predicted_n"] == 64
    assert timings["draft_n"] > 0 and timings["draft_n_accepted"] == timings["draft_n"]

    status = ServerStatus.from_json(get_json(f"{drafting_server}/impetus/status"))
    (tiny,) = [m for m in status.models if m.name == "tiny"]
    assert tiny.speculative == "draft" and tiny.drafted_tokens == timings["draft_n"]
    assert tiny.accepted_tokens == timings["draft_n_accepted"]
    assert any("tiny-twin drafts for it" in note for note in tiny.plan_notes)

    with urllib.request.urlopen(f"{drafting_server}/metrics", timeout=60) as reply:
        metrics = reply.read().decode()
    assert f'impetus_draft_tokens_total{{model="tiny"}} {timings["draft_n"]}' in metrics
    assert 'impetus_draft_acceptance_ratio{model="tiny"} 1.0000' in metrics

    from impetus_cli.tui.widgets import throughput_text

    n = timings["draft_n"]
    assert f"drafts {n}/{n} accepted (100%)" in throughput_text(status).plain


def test_a_plan_with_a_draft_model_counts_it(tiny_gguf: Path, tmp_path: Path) -> None:
    twin = Path(shutil.copy(tiny_gguf, tmp_path / "twin.gguf"))
    store = Registry({"tiny": tiny_gguf, "tiny-twin": twin})

    def plan(**settings: Any) -> Any:
        budget = 64_000_000_000  # the same machine for the three plans
        manager = ModelManager(
            server_settings(**settings), store=store, memory_probe=lambda: budget
        )
        return manager.plan("tiny")

    alone, drafted, off = (
        plan(speculative="ngram"),
        plan(draft="tiny-twin"),
        plan(speculative="off"),
    )
    assert (off.speculative, alone.speculative, drafted.speculative) == ("off", "ngram", "draft")
    assert drafted.draft is not None and drafted.draft.name == "tiny-twin"
    # the draft model's weights and KV cache on top of the logits rows n-gram drafts need
    assert drafted.draft_bytes > alone.draft_bytes + twin.stat().st_size > off.draft_bytes == 0
    assert drafted.total_bytes - alone.total_bytes == drafted.draft_bytes - alone.draft_bytes


def test_speculation_is_planned_off_where_it_cannot_run(tiny_gguf: Path) -> None:
    """MLX (mlx-lm speculates one sequence at a time, outside the batch the engine runs) and
    recurrent layers (no rollback of a rejected draft) plan it off and say why; a budget too
    tight for the draft tokens' logits loads the model without them rather than failing."""
    from dataclasses import replace

    from impetus_cli.runtime.config import Settings
    from impetus_cli.runtime.inspect import inspect_model
    from impetus_cli.runtime.tuning import plan_load
    from tests.test_tuning import linux

    info = inspect_model(tiny_gguf)
    local = LocalModel(name="t", format="gguf", path=tiny_gguf, origin="path", size_bytes=1)
    settings = Settings(ctx=2048, parallel=1)
    roomy = plan_load(local, info, linux(), settings, 8_000_000_000)
    assert roomy.speculative == "ngram" and roomy.draft_bytes > 0
    mlx = plan_load(
        replace(local, format="mlx"), replace(info, format="mlx"), linux(), settings, 8_000_000_000
    )
    assert mlx.speculative == "off" and any("mlx-lm drafts" in n for n in mlx.notes)
    hybrid = replace(info, recurrent_layers=1, recurrent_state_bytes=1000)
    assert plan_load(local, hybrid, linux(), settings, 8_000_000_000).speculative == "off"
    # a budget that holds the smallest context, with less room than the drafts' logits take
    bare = replace(settings, speculative="off", cache_ram=0)
    least = plan_load(local, info, linux(), bare, 8_000_000_000).total_bytes
    tight = plan_load(
        local, info, linux(), replace(bare, speculative="ngram"), least + roomy.draft_bytes // 2
    )
    assert tight.speculative == "off" and tight.draft_bytes == 0 and tight.n_ctx == 2048
