"""The runaway guard: it stops loops, and it leaves normal long replies alone.

False positives are measured on real text tokenized by a real tokenizer (Gemma 3's, from the
built-in model): source files of the Python standard library and of this project, JSON data
and Markdown tables, each fed as if it were one long reply.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import pytest

from impetus_cli.runtime.loop_guard import LoopGuard, LoopGuardConfig

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Long, real files with a lot of regular structure: the hardest normal replies for a guard.
CORPUS = [
    STDLIB / "argparse.py",
    STDLIB / "typing.py",
    STDLIB / "json" / "decoder.py",
    STDLIB / "http" / "server.py",
    STDLIB / "asyncio" / "base_events.py",
    STDLIB / "unittest" / "mock.py",
    STDLIB / "email" / "_header_value_parser.py",
    STDLIB / "encodings" / "cp1252.py",  # a 256-entry decoding table
    STDLIB / "html" / "entities.py",  # thousands of near-identical dictionary lines
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",  # Markdown tables
    ROOT / "impetus_cli" / "runtime" / "data" / "catalog.json",
]


def test_a_repeated_span_trips_the_guard_and_says_why() -> None:
    rng = random.Random(1)
    intro = [rng.randrange(5000) for _ in range(300)]
    sentence = [rng.randrange(5000) for _ in range(18)]
    guard = LoopGuard()
    tripped_at = None
    for i, token in enumerate(intro + sentence * 30):
        if guard.feed([token]):
            tripped_at = i
            break
    assert tripped_at is not None and tripped_at < len(intro) + 18 * 16
    assert "repeat a 18-token span" in (guard.tripped or "")


def test_a_loop_too_long_for_the_span_check_trips_the_novelty_check() -> None:
    rng = random.Random(2)
    paragraph = [rng.randrange(5000) for _ in range(700)]  # longer than max_period
    guard = LoopGuard()
    assert guard.feed(paragraph * 3) is not None
    assert "no new 16-token sequence" in (guard.tripped or "")


def test_short_runs_of_repeats_stay_below_the_span() -> None:
    zeros = [11, 12] * 100  # `0, ` a hundred times: a zero-filled array literal
    assert LoopGuard().feed(zeros) is None
    # the same with a smaller span threshold (configurable) trips
    assert LoopGuard(LoopGuardConfig(min_span=64)).feed(zeros) is not None


def test_random_text_never_trips() -> None:
    rng = random.Random(3)
    assert LoopGuard().feed([rng.randrange(40) for _ in range(30_000)]) is None


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_gguf: Path):  # type: ignore[no-untyped-def]
    llama_cpp = pytest.importorskip("llama_cpp")
    vocab = llama_cpp.Llama(str(gemma_gguf), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode(), add_bos=False, special=False)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_real_code_and_documents_do_not_trip_the_guard(path: Path, gemma_tokenizer) -> None:  # type: ignore[no-untyped-def]
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    tokens = gemma_tokenizer(path.read_text(encoding="utf-8"))[:16_000]
    assert len(tokens) > 1500  # long enough to exercise both checks
    guard = LoopGuard()
    assert guard.feed(tokens) is None, f"{path.name}: {guard.tripped}"
