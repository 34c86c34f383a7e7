"""`impetus bench`'s local mode without the terminal: llama-bench's protocol (runtime/bench.py)
on our engines for one model or both of its forms, what this chip should reach, the flags for
runs well below it, and the history saved under IMPETUS_HOME/bench/."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from impetus_cli import __version__
from impetus_cli.errors import ImpetusError
from impetus_cli.runtime import bench as protocol
from impetus_cli.runtime.bench import BenchResult, BenchRun
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.types import HardwareProfile, LocalModel, ModelInfo

Step = Callable[[str, str, int, int], None]  # model, test, repetition, repetitions
BACKENDS = ("gguf", "mlx", "both")
EDIT_TOKENS = 256  # the edit test's reply: long enough for drafts to reach their full length


def bench_local(
    settings: Settings,
    model: str,
    backend: str,
    n_prompt: int,
    n_gen: int,
    reps: int,
    depth: int,
    step: Step = lambda *_: None,
    warn: Callable[[str], None] = lambda _: None,
    edit: int = EDIT_TOKENS,
) -> list[BenchRun]:
    """Benchmark the model (both its GGUF and MLX forms with ``backend="both"``), save each
    run to the history, and return them. ``edit``: tokens of the edit test (0: none)."""
    # A context just large enough for the test keeps the KV cache small.
    # (the edit test's prompt is a few thousand characters of code)
    settings = replace(settings, ctx=max(4096, depth + n_prompt + n_gen + edit + 64), parallel=1)
    manager = ModelManager(settings)
    try:
        runs = []
        for local in models_for(manager, model, backend, warn):
            runs.append(bench_one(manager, local, n_prompt, n_gen, reps, depth, step, edit))
            save_run(settings, runs[-1])
        return runs
    finally:
        manager.close()


def models_for(
    manager: ModelManager, name: str, backend: str, warn: Callable[[str], None]
) -> list[LocalModel]:
    if backend not in BACKENDS:
        raise ImpetusError(f"Unknown backend {backend!r}", "Use --backend gguf, mlx or both.")
    first = manager.resolve(name)
    if backend != "both":
        return [first]
    stem = first.name.removesuffix("-mlx").removesuffix("-gguf")
    same = [
        m for m in manager.available() if m.name.removesuffix("-mlx").removesuffix("-gguf") == stem
    ]
    by_format = {("gguf" if m.format == "gguf" else "mlx"): m for m in [first, *same]}
    if len(by_format) < 2:
        warn(f"{name} is only local in {first.format} form: benchmarking that.")
    return list(by_format.values())


def bench_one(
    manager: ModelManager,
    local: LocalModel,
    n_prompt: int,
    n_gen: int,
    reps: int,
    depth: int,
    step: Step,
    edit: int = EDIT_TOKENS,
) -> BenchRun:
    from impetus_cli.runtime.engines import load_engine
    from impetus_cli.runtime.hardware import detect

    plan, info, hw = manager.plan(local.name), manager.info(local), detect()
    progress = lambda test, rep, total: step(local.name, test, rep, total)  # noqa: E731
    # Nothing restored from the prompt cache's tiers: the random prompts repeat from one run to
    # the next (seeded), and a prompt restored from disk would read as a slow prefill.
    plan = replace(plan, prompt_cache_dir=None, cache_ram_bytes=0, cache_disk_bytes=0)
    # pp and tg decode as llama-bench does, without speculation; the edit test runs both ways.
    plain = replace(plan, speculative="off", draft=None, draft_bytes=0)
    step(local.name, "loading", 0, 0)
    engine = load_engine(plain, info)
    try:
        results = protocol.run_tests(
            engine, n_prompt=n_prompt, n_gen=n_gen, reps=reps, depth=depth, progress=progress
        )
        if edit:
            results += (protocol.run_edit(engine, edit, reps, "off", progress),)
    finally:
        engine.close()
    if edit and plan.speculative != "off":
        engine = load_engine(plan, info)
        try:
            results += (protocol.run_edit(engine, edit, reps, plan.speculative, progress),)
        finally:
            engine.close()
    expected, flags = expectations(hw, info, depth, results)
    return BenchRun(
        time=time.time(),
        impetus_version=__version__,
        backend=protocol.backend_version(local.format),
        model=local.name,
        model_file=str(local.path),
        model_bytes=info.file_bytes,
        n_params=info.n_params,
        quantization=info.quantization,
        hardware=protocol.hardware_record(hw),
        threads=plan.n_threads,
        gpu_layers=plan.n_gpu_layers,
        n_batch=plan.n_batch,
        n_ubatch=plan.n_ubatch,
        flash_attn=plan.flash_attn,
        n_ctx=plan.n_ctx,
        results=results,
        expected=expected,
        flags=flags,
    )


def expectations(
    hw: HardwareProfile, info: ModelInfo, depth: int, results: tuple[BenchResult, ...]
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Expected tokens/s per test (from active parameters and bandwidth), and flags for
    results under 80% of it."""
    from impetus_cli.runtime.hardware import expected_speeds

    kv = info.kv_bytes_per_token() * depth
    bandwidth = None if hw.apple_silicon else protocol.measure_bandwidth()
    speeds = expected_speeds(
        hw,
        info.file_bytes,
        kv,
        info.n_params,
        bandwidth_gbs=bandwidth,
        active_params=info.active_params,
    )
    expected: dict[str, float] = {}
    flags: list[str] = []
    for result in results:
        target = speeds.get("pp" if result.test.startswith("pp") else "tg")
        if not target:
            continue
        expected[result.test] = target
        if result.mean < 0.8 * target:
            flags.append(
                f"{result.test}: {result.mean:.1f} tok/s is {result.mean / target:.0%} of the "
                f"expected {target:.1f}. {likely_causes(hw)}"
            )
    return expected, tuple(flags)


def likely_causes(hw: HardwareProfile) -> str:
    if hw.rosetta:
        return "Python runs under Rosetta: install an arm64 Python."
    if hw.apple_silicon:
        return "Likely causes: llama.cpp built without Metal, other load, Low Power Mode."
    return "Likely causes: other load on the CPU, too many threads, memory bandwidth shared."


def save_run(settings: Settings, run: BenchRun) -> Path:
    from impetus_cli.runtime.fs import atomic_write_json

    settings.bench_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run.time))
    path = settings.bench_dir / f"{stamp}-{run.model.replace('/', '_').replace(':', '_')}.json"
    atomic_write_json(path, run.to_dict())
    return path


def history(settings: Settings) -> tuple[list[BenchRun], list[str]]:
    """Past runs, oldest first, and the names of files that could not be read."""
    runs, skipped = [], []
    for path in sorted(settings.bench_dir.glob("*.json")):
        try:
            runs.append(BenchRun.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError):
            skipped.append(path.name)
    return runs, skipped
