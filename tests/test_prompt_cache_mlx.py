"""The prompt cache tiers of the MLX engine on real mlx-lm (the tiny MLX model): caches past the
planned ones stay in RAM within a budget, leave for disk through mlx-lm's own serialization,
survive a restart, and come back without their tokens being evaluated; damaged or stale
entries are never restored."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.types import ChatMessage, GenerationChunk, SamplingParams
from tests.fixtures.prompt_cache import entries, tier
from tests.fixtures.tiny_models import make_plan

pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
GB = 1_000_000_000
FRUITS = ("apples", "bananas", "cherries")


def load(path: Path, cache: Path | None = None, *, ram: int = GB, disk: int = GB) -> Any:
    from impetus_cli.runtime.engines.mlx import MlxEngine

    info = inspect_model(path)
    plan = replace(
        make_plan(path, info, 1024),
        cache_ram_bytes=ram,
        cache_disk_bytes=disk if cache is not None else 0,
        prompt_cache_dir=cache,
    )
    return MlxEngine.load(plan, info)


def run(engine: Any, tokens: list[int]) -> list[GenerationChunk]:
    return list(engine.generate(tokens, GREEDY))


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def prompt(engine: Any, topic: str) -> list[int]:
    text = f"{topic}. " + " ".join(f"line {i}: all about {topic}." for i in range(30))
    tokens = list(engine.tokenize(engine.render([ChatMessage(role="user", content=text)])))
    assert len(tokens) > 256
    return tokens


def cold_text(path: Path, tokens: list[int]) -> str:
    engine = load(path, ram=0)
    try:
        return text_of(run(engine, tokens))
    finally:
        engine.close()


def test_a_conversation_pushed_out_comes_back_from_ram(tiny_mlx_dir: Path) -> None:
    engine = load(tiny_mlx_dir)
    try:
        a = prompt(engine, FRUITS[0])
        run(engine, a)
        run(engine, prompt(engine, FRUITS[1]))  # the planned cache is the other one now
        assert tier(engine, "ram").entries == 1
        follow = a + engine.tokenize(" and then?", special=False)
        chunks = run(engine, follow)
        assert chunks[-1].cached_tokens >= len(a)
        assert engine.last_evaluated_tokens == len(follow) - chunks[-1].cached_tokens
        assert tier(engine, "ram").hits == 1
    finally:
        engine.close()
    assert text_of(chunks) == cold_text(tiny_mlx_dir, follow)


def test_without_room_in_ram_a_conversation_that_leaves_is_evaluated_again(
    tiny_mlx_dir: Path,
) -> None:
    engine = load(tiny_mlx_dir, ram=1)
    try:
        a = prompt(engine, FRUITS[0])
        run(engine, a)
        run(engine, prompt(engine, FRUITS[1]))
        ram = tier(engine, "ram")
        assert ram.entries == 0 and ram.bytes <= ram.budget
        assert run(engine, [*a, 5])[-1].cached_tokens < 16  # the template's opening only
    finally:
        engine.close()


def test_a_full_ram_tier_spills_to_disk_and_a_restart_restores(
    tiny_mlx_dir: Path, tmp_path: Path
) -> None:
    engine = load(tiny_mlx_dir, tmp_path, ram=1)
    try:
        a = prompt(engine, FRUITS[0])
        run(engine, a)
        run(engine, prompt(engine, FRUITS[1]))  # a leaves memory for disk
        engine._pool.disk.flush()
        assert len(entries(tmp_path)) == 1
        follow = a + engine.tokenize(" and then?", special=False)
        assert run(engine, follow)[-1].cached_tokens >= len(a)
        assert tier(engine, "disk").hits == 1
    finally:
        engine.close()  # every cache to disk
    again = load(tiny_mlx_dir, tmp_path)
    try:
        turn = follow + again.tokenize(" and after that?", special=False)
        chunks = run(again, turn)
        assert chunks[-1].cached_tokens >= len(follow)
        assert again.last_evaluated_tokens == len(turn) - chunks[-1].cached_tokens
    finally:
        again.close()
    assert text_of(chunks) == cold_text(tiny_mlx_dir, turn)


@pytest.mark.parametrize("damage", ["flipped", "model changed"])
def test_damaged_or_stale_disk_entries_are_never_restored(
    tiny_mlx_dir: Path, tmp_path: Path, damage: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_mlx_dir, model)
    cache = tmp_path / "cache"
    first = load(model, cache)
    a = prompt(first, FRUITS[2])
    run(first, a)
    first.close()
    (entry,) = entries(cache)
    if damage == "flipped":
        data = bytearray(entry.read_bytes())
        data[-100] ^= 0xFF
        entry.write_bytes(bytes(data))
    else:
        config = model / "config.json"
        stat = config.stat()
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = load(model, cache)
    try:
        assert run(again, [*a, 5])[-1].cached_tokens == 0
        if damage == "flipped":
            assert not entry.exists()
    finally:
        again.close()
