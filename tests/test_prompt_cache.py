"""The prompt cache behind the GGUF engine's KV cache, on real llama.cpp: a conversation that
leaves the KV cache comes back from host RAM or from disk without its tokens being evaluated
again, and answers as a cold evaluation does; nothing stale or damaged is ever restored; the
tiers stay within their budgets. Counters come from the engine itself."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.types import ChatMessage, GenerationChunk, ModelInfo, SamplingParams
from tests.fixtures.prompt_cache import entries, tier
from tests.fixtures.tiny_models import make_plan, write_tiny_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
GB = 1_000_000_000
# Every chat prompt starts with the template's opening: a few tokens a slot always shares.
OPENING = 16
FRUITS = ("apples", "bananas", "cherries", "dates", "figs")


def load(
    path: Path,
    cache: Path | None = None,
    *,
    ram: int = GB,
    disk: int = GB,
    n_parallel: int = 1,
    n_ctx: int = 1024,
    info: ModelInfo | None = None,
    **plan: Any,
) -> Any:
    from impetus_cli.runtime.engines.llama import LlamaEngine

    info = info or inspect_model(path)
    base = make_plan(path, info, n_ctx=n_ctx, n_parallel=n_parallel, **plan)
    return LlamaEngine.load(
        replace(
            base,
            cache_ram_bytes=ram,
            cache_disk_bytes=disk if cache is not None else 0,
            prompt_cache_dir=cache,
        ),
        info,
    )


def run(engine: Any, tokens: list[int], sampling: SamplingParams = GREEDY) -> list[GenerationChunk]:
    return list(engine.generate(tokens, sampling))


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def prompt(engine: Any, topic: str, lines: int = 12) -> list[int]:
    text = topic + ". " + " ".join(f"line {i}: {topic}." for i in range(lines))
    tokens = list(engine.tokenize(engine.render([ChatMessage(role="user", content=text)])))
    assert len(tokens) > 256  # long enough to be worth keeping
    return tokens


# -- RAM --------------------------------------------------------------------------------------


def test_a_conversation_pushed_out_by_other_streams_comes_back_from_ram(tiny_gguf: Path) -> None:
    """Two streams take both slots while the first conversation waits; its next turn is
    restored from RAM, evaluates only the new tokens, and answers as a cold evaluation."""
    engine, cold = load(tiny_gguf, n_parallel=2), load(tiny_gguf, ram=0)
    try:
        a = prompt(engine, "the main agent's conversation")
        run(engine, a)
        long = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
        b = engine.generate(prompt(engine, "a subagent reads the parser"), long)
        c = engine.generate(prompt(engine, "another subagent writes tests"), long)
        next(iter(b)), next(iter(c))  # both admitted: they hold both slots now
        assert [ch.finish_reason for ch in (*b, *c) if ch.finish_reason] == ["length"] * 2
        assert tier(engine, "ram").entries == 1
        follow = a + engine.tokenize(" and now the next turn", special=False)
        chunks = run(engine, follow)
        cached = chunks[-1].cached_tokens
        assert cached >= len(a) and cached == engine.last_cached_tokens
        assert engine.last_evaluated_tokens == len(follow) - cached
        assert text_of(chunks) == text_of(run(cold, follow))
        ram = tier(engine, "ram")
        assert (ram.hits, ram.tokens) == (1, cached) and 0 < ram.bytes <= ram.budget
    finally:
        engine.close()
        cold.close()


def test_the_ram_tier_stays_within_its_budget_and_keeps_the_latest(tiny_gguf: Path) -> None:
    probe = load(tiny_gguf)
    try:
        topics = [prompt(probe, f"all about {fruit}") for fruit in FRUITS[:4]]
        run(probe, topics[0])
        run(probe, topics[1])  # topics[0] leaves the only slot
        size = tier(probe, "ram").bytes
    finally:
        probe.close()
    assert size > 0
    engine = load(tiny_gguf, ram=size * 2 + size // 2)  # room for two entries
    try:
        for tokens in topics:
            run(engine, tokens)
        ram = tier(engine, "ram")
        assert ram.entries == 2 and ram.bytes <= ram.budget
        kept = run(engine, topics[2] + engine.tokenize(" more", special=False))
        assert kept[-1].cached_tokens >= len(topics[2])
        gone = run(engine, topics[0] + engine.tokenize(" more", special=False))
        assert gone[-1].cached_tokens < OPENING  # the oldest went first
    finally:
        engine.close()


def test_without_a_ram_budget_a_conversation_that_leaves_is_evaluated_again(
    tiny_gguf: Path,
) -> None:
    engine = load(tiny_gguf, ram=0)
    try:
        a = prompt(engine, "the main conversation")
        run(engine, a)
        run(engine, prompt(engine, "another one takes the slot"))
        assert run(engine, [*a, 5, 6])[-1].cached_tokens < OPENING
        assert engine.cache_tiers == ()
    finally:
        engine.close()


# -- disk -------------------------------------------------------------------------------------


def test_a_restart_reuses_the_conversation_saved_at_unload(tiny_gguf: Path, tmp_path: Path) -> None:
    first = load(tiny_gguf, tmp_path)
    tokens = prompt(first, "the agent's system prompt")
    run(first, tokens)
    first.close()  # saves the slots to disk
    assert len(entries(tmp_path)) == 1
    again, cold = load(tiny_gguf, tmp_path), load(tiny_gguf, ram=0)
    try:
        follow = tokens + again.tokenize(" and the next turn", special=False)
        chunks = run(again, follow)
        cached = chunks[-1].cached_tokens
        assert cached >= len(tokens)  # restored from disk, not evaluated
        assert again.last_evaluated_tokens == len(follow) - cached
        assert text_of(chunks) == text_of(run(cold, follow))
        assert (tier(again, "disk").hits, tier(again, "ram").hits) == (1, 0)
    finally:
        again.close()
        cold.close()


def test_conversations_leaving_a_full_ram_tier_go_to_disk_and_come_back(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    engine, cold = load(tiny_gguf, tmp_path, ram=1), load(tiny_gguf, ram=0)  # RAM holds none
    try:
        a = prompt(engine, "the first conversation")
        run(engine, a)
        run(engine, prompt(engine, "the second takes the slot"))
        engine._cache.disk.flush()  # the writer thread has written it
        assert len(entries(tmp_path)) == 1 and tier(engine, "ram").entries == 0
        follow = a + engine.tokenize(" then a question", special=False)
        chunks = run(engine, follow)
        assert chunks[-1].cached_tokens >= len(a)
        assert text_of(chunks) == text_of(run(cold, follow))
    finally:
        engine.close()
        cold.close()


def test_the_disk_tier_stays_within_its_budget(tiny_gguf: Path, tmp_path: Path) -> None:
    engine = load(tiny_gguf, tmp_path, ram=1)
    try:
        topics = [prompt(engine, f"all about {fruit}") for fruit in FRUITS]
        run(engine, topics[0])
        run(engine, topics[1])
        engine._cache.disk.flush()
        (one,) = entries(tmp_path)
        size = one.stat().st_size
    finally:
        engine.close()
    for path in entries(tmp_path):
        path.unlink()
    budget = size * 2 + size // 2
    engine = load(tiny_gguf, tmp_path, ram=1, disk=budget)
    try:
        for tokens in topics:
            run(engine, tokens)
        engine._cache.disk.flush()
        on_disk = sum(p.stat().st_size for p in entries(tmp_path))
        assert len(entries(tmp_path)) == 2 and on_disk <= budget
        assert tier(engine, "disk").bytes <= budget
    finally:
        engine.close()
    assert sum(p.stat().st_size for p in entries(tmp_path)) <= budget  # after unload too


def test_a_changed_template_never_restores(tiny_gguf: Path, tmp_path: Path) -> None:
    first = load(tiny_gguf, tmp_path)
    tokens = prompt(first, "the agent's system prompt")
    run(first, tokens)
    first.close()
    info = replace(inspect_model(tiny_gguf), chat_template="{{ messages[0]['content'] }}")
    again = load(tiny_gguf, tmp_path, info=info)
    try:
        assert run(again, [*tokens, 5, 6])[-1].cached_tokens == 0
        assert tier(again, "disk").entries == 0
    finally:
        again.close()


@pytest.mark.parametrize("change", ["rewritten", "touched"])
def test_a_modified_model_file_never_restores(tmp_path: Path, change: str) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    first = load(model, cache)
    tokens = prompt(first, "the agent's system prompt")
    run(first, tokens)
    first.close()
    stat = model.stat()
    if change == "rewritten":  # other weights, the same size
        write_tiny_gguf(model, seed=1)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = load(model, cache)
    try:
        assert run(again, [*tokens, 5, 6])[-1].cached_tokens == 0
    finally:
        again.close()


@pytest.mark.parametrize("damage", ["flipped", "truncated", "half-written"])
def test_a_damaged_disk_entry_is_deleted_and_the_prompt_evaluated(
    tiny_gguf: Path, tmp_path: Path, damage: str
) -> None:
    first = load(tiny_gguf, tmp_path)
    tokens = prompt(first, "the agent's system prompt")
    run(first, tokens)
    first.close()
    (entry,) = entries(tmp_path)
    data = bytearray(entry.read_bytes())
    if damage == "flipped":
        data[-len(data) // 3] ^= 0xFF  # one byte of the KV values
        entry.write_bytes(bytes(data))
    elif damage == "truncated":
        entry.write_bytes(bytes(data[: len(data) - 100]))
    else:  # a crash while writing: the temporary file, never renamed
        entry.rename(entry.with_suffix(".tmp"))
    again = load(tiny_gguf, tmp_path)
    try:
        final = run(again, tokens + again.tokenize(" more", special=False))[-1]
        assert final.cached_tokens == 0 and final.finish_reason == "length"
        assert list(tmp_path.glob("*/*.tmp")) == [] and not entry.exists()
    finally:
        again.close()


# -- Gemma (sliding window) --------------------------------------------------------------------

LONG_PROMPTS = pytest.mark.timeout(900)


@LONG_PROMPTS
def test_gemma_conversation_comes_back_from_ram_and_after_a_restart(
    gemma_gguf: Path, tmp_path: Path
) -> None:
    """On a sliding-window model a conversation that left the KV cache comes back from RAM, and
    after a restart from disk: its next turn evaluates only its new tokens and answers as a
    cold evaluation does."""
    from tests.test_llama_engine import assert_replies_as_a_cold_evaluation

    engine = load(gemma_gguf, tmp_path, n_ctx=2048, snapshot_bytes=100_000_000)
    cold = load(gemma_gguf, n_ctx=2048, ram=0)
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=0)
    try:
        text = " ".join(f"rule {i}: small steps." for i in range(200))
        a = [2, *engine.tokenize(text, special=False)[:700]]
        other = [2, *engine.tokenize(" Figs" + " and dates" * 400, special=False)[:700]]
        follow = a + engine.tokenize(" Which rule comes first?", special=False)
        turn = follow + engine.tokenize(" And the second?", special=False)
        run(engine, a, greedy)
        run(engine, other, greedy)  # a leaves the only slot
        chunks = run(engine, follow, greedy)
        # all of a, or its window checkpoint a few tokens before its end (CHECKPOINT_BACK)
        assert chunks[-1].cached_tokens >= len(a) - 4 and tier(engine, "ram").hits == 1
        assert_replies_as_a_cold_evaluation(chunks, cold, follow)
    finally:
        engine.close()
    again = load(gemma_gguf, tmp_path, n_ctx=2048, snapshot_bytes=100_000_000)
    try:
        chunks = run(again, turn, greedy)
        assert chunks[-1].cached_tokens >= len(follow) - 4 and tier(again, "disk").hits == 1
        assert again.last_evaluated_tokens == len(turn) - chunks[-1].cached_tokens
        assert_replies_as_a_cold_evaluation(chunks, cold, turn)
    finally:
        again.close()
        cold.close()


def test_threads_reading_the_counters_while_entries_move(tiny_gguf: Path, tmp_path: Path) -> None:
    """The status API reads the tiers from other threads while the scheduler moves entries."""
    engine = load(tiny_gguf, tmp_path, ram=1)
    stop, seen = threading.Event(), []

    def watch() -> None:
        while not stop.is_set():
            seen.append(sum(t.entries for t in engine.cache_tiers))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(3):
            run(engine, prompt(engine, f"conversation {i}"))
    finally:
        stop.set()
        watcher.join()
        engine.close()
    assert seen and len(entries(tmp_path)) == 3
