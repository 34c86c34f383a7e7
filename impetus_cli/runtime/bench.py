"""The llama-bench protocol on our engines: prompt processing (pp) and generation (tg).

pp N: evaluate N random tokens (a fresh prefix each time, so nothing is cached) and read the
engine's prompt speed, which times evaluation only, not tokenization or sampling. tg N: generate
exactly N tokens after a one-token prompt, past end-of-generation tokens. With a depth D, a
random D-token prefix is evaluated first and both tests run on top of it. One warm-up, then
``reps`` repetitions; mean and standard deviation in tokens per second.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from impetus_cli.runtime.engines.base import Engine
from impetus_cli.runtime.types import GenerationChunk, HardwareProfile, SamplingParams


@dataclass(frozen=True)
class BenchResult:
    test: str  # "pp512", "tg128", "pp512 @ d8192"
    n_prompt: int
    n_gen: int
    depth: int
    samples: tuple[float, ...]  # tokens/s of each repetition
    # Speculative decoding (edit tests): the mode, and the share of drafted tokens accepted.
    speculative: str = ""
    acceptance: float | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def stddev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


@dataclass(frozen=True)
class BenchRun:
    """One `impetus bench` run with everything needed to compare it later."""

    time: float
    impetus_version: str
    backend: str
    model: str
    model_file: str
    model_bytes: int
    n_params: int | None
    quantization: str | None
    hardware: dict[str, Any]
    threads: int
    gpu_layers: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    n_ctx: int
    results: tuple[BenchResult, ...]
    expected: dict[str, float] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["results"] = [{**asdict(r), "mean": r.mean, "stddev": r.stddev} for r in self.results]
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> BenchRun:
        results = tuple(
            BenchResult(
                r["test"],
                r["n_prompt"],
                r["n_gen"],
                r["depth"],
                tuple(r["samples"]),
                r.get("speculative", ""),
                r.get("acceptance"),
            )
            for r in data["results"]
        )
        fields = {k: v for k, v in data.items() if k in BenchRun.__dataclass_fields__}
        fields["flags"] = tuple(fields.get("flags", ()))
        return BenchRun(**{**fields, "results": results})


def _drain(engine: Engine, tokens: list[int], sampling: SamplingParams) -> GenerationChunk:
    last = GenerationChunk()
    for chunk in engine.generate(tokens, sampling):
        last = chunk
    if last.finish_reason is None:
        raise RuntimeError("the engine ended a generation without a final chunk")
    return last


class _Tokens:
    """Random token ids from the model's vocabulary (seeded: the same run, the same tokens)."""

    def __init__(self, engine: Engine, seed: int = 1234):
        self.vocab = engine.info.vocab_size or 256
        self.rng = random.Random(seed)

    def take(self, n: int) -> list[int]:
        return [self.rng.randrange(1, self.vocab) for _ in range(n)]


def measure_pp(engine: Engine, n_prompt: int, depth: int, tokens: _Tokens) -> float:
    prefix = tokens.take(depth)
    if depth:
        _drain(engine, prefix, SamplingParams(max_tokens=1, temperature=0))
    final = _drain(
        engine, prefix + tokens.take(n_prompt), SamplingParams(max_tokens=1, temperature=0)
    )
    return final.prompt_tps


def measure_tg(engine: Engine, n_gen: int, depth: int, tokens: _Tokens) -> float:
    prompt = tokens.take(depth + 1)
    sampling = SamplingParams(max_tokens=n_gen, temperature=0, ignore_eos=True)
    final = _drain(engine, prompt, sampling)
    return final.generation_tps


def edit_prompt(chars: int = 4000) -> str:
    """A request whose reply repeats its input, as an edit or "apply" request's does: a source
    file (the standard library's textwrap.py, its first ``chars`` characters up to a line's
    end) and, completion style, the start of the same file again. A base model reproduces it
    as readily as a chat model, with no chat template."""
    import inspect
    import textwrap

    source = inspect.getsource(textwrap)
    code = source[: source.rfind("\n", 0, chars) + 1]
    head = "File: textwrap.py\n```python\n"
    return f"{head}{code}```\n\nThe same file, copied exactly:\n\n{head}"


def measure_edit(engine: Engine, n_gen: int) -> tuple[float, float | None]:
    """Tokens/s of a reply that copies its prompt (``edit_prompt``), greedy, and the share of
    drafted tokens the model accepted (None: nothing was drafted)."""
    tokens = engine.tokenize(edit_prompt())
    sampling = SamplingParams(max_tokens=n_gen, temperature=0, ignore_eos=True)
    final = _drain(engine, tokens, sampling)
    drafted = final.drafted_tokens
    return final.generation_tps, (final.accepted_tokens / drafted if drafted else None)


def run_edit(
    engine: Engine,
    n_gen: int,
    reps: int,
    speculative: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> BenchResult:
    """The edit test (``measure_edit``) as pp and tg run: a warm-up (which also caches the
    prompt), then ``reps`` repetitions; named after the engine's speculative mode."""
    name = f"edit{n_gen} {speculative}"
    measure_edit(engine, n_gen)
    samples, rates = [], []
    for rep in range(reps):
        if progress:
            progress(name, rep, reps)
        tps, rate = measure_edit(engine, n_gen)
        samples.append(tps)
        rates += [rate] if rate is not None else []
    acceptance = statistics.fmean(rates) if rates else None
    return BenchResult(name, 0, n_gen, 0, tuple(samples), speculative, acceptance)


def run_tests(
    engine: Engine,
    *,
    n_prompt: int = 512,
    n_gen: int = 128,
    reps: int = 5,
    depth: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[BenchResult, ...]:
    """pp and tg as llama-bench runs them: a warm-up, then ``reps`` timed repetitions."""
    tokens = _Tokens(engine)
    suffix = f" @ d{depth}" if depth else ""
    plans = []
    if n_prompt:
        plans.append(
            (
                f"pp{n_prompt}{suffix}",
                n_prompt,
                0,
                lambda: measure_pp(engine, n_prompt, depth, tokens),
            )
        )
    if n_gen:
        plans.append(
            (f"tg{n_gen}{suffix}", 0, n_gen, lambda: measure_tg(engine, n_gen, depth, tokens))
        )
    results = []
    for name, pp, tg, measure in plans:
        measure()  # warm-up
        samples = []
        for rep in range(reps):
            if progress:
                progress(name, rep, reps)
            samples.append(measure())
        results.append(BenchResult(name, pp, tg, depth, tuple(samples)))
    return tuple(results)


def measure_bandwidth(megabytes: int = 512, reps: int = 3) -> float:
    """Read bandwidth in GB/s: the best of a few passes summing a large array (decode's pattern:
    stream every weight once)."""
    import numpy as np

    data = np.ones(megabytes * 1_000_000 // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def backend_version(fmt: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    package = "llama-cpp-python" if fmt == "gguf" else "mlx-lm"
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package


def hardware_record(hw: HardwareProfile) -> dict[str, Any]:
    record = asdict(hw)
    record["variant"] = hw.variant
    record["python"] = platform.python_version()
    return record
