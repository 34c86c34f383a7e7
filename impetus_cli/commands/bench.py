"""`impetus bench`: how fast this machine runs a model, and how fast it should.

Local mode runs llama-bench's protocol on our engines (runtime/bench.py); ``--server URL``
measures a running OpenAI-compatible server the way an agent uses it (agentbench.py);
``--history`` shows past runs saved under IMPETUS_HOME/bench/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from impetus_cli.commands._options import JsonOpt
from impetus_cli.commands._ui import console, err_console, print_json
from impetus_cli.errors import ImpetusError

if TYPE_CHECKING:
    from impetus_cli.runtime.bench import BenchRun
    from impetus_cli.runtime.config import Settings
    from impetus_cli.runtime.manager import ModelManager
    from impetus_cli.runtime.types import LocalModel


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def bench(
    model: Annotated[
        str | None, typer.Argument(help="Model to benchmark (default: built-in).")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="gguf, mlx or both (when both forms are local).")
    ] = "gguf",
    n_prompt: Annotated[
        int, typer.Option("-p", "--n-prompt", help="Prompt tokens (pp test).")
    ] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens (tg test).")] = 128,
    reps: Annotated[int, typer.Option("-r", "--reps", min=1, help="Repetitions.")] = 5,
    depth: Annotated[int, typer.Option("--depth", min=0, help="Context depth for both tests.")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", "-t")] = None,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    history: Annotated[bool, typer.Option("--history", help="Show past runs.")] = False,
    server: Annotated[
        str | None, typer.Option("--server", help="Benchmark a running server.")
    ] = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Streams for --server.")] = 4,
    depths: Annotated[
        str, typer.Option("--depths", help="Prompt depths for --server.")
    ] = "2048,8192,16384",
    chars_per_token: Annotated[
        float | None,
        typer.Option(help="Size --server prompts with this ratio instead of calibrating."),
    ] = None,
    sessions: Annotated[
        int,
        typer.Option(
            min=0, help="--server: sessions sharing the first depth's instructions (0: none)."
        ),
    ] = 0,
) -> None:
    """Prompt and generation tokens/s (llama-bench's method), against what this chip should do."""
    from impetus_cli.runtime.config import load_settings

    settings = load_settings({"threads": threads})
    if history:
        _show_history(settings, as_json)
    elif server:
        _bench_server(
            server, model, settings, parallel, n_gen, depths, as_json, chars_per_token, sessions
        )
    else:
        runs = _bench_local(
            settings, model or settings.default_model, backend, n_prompt, n_gen, reps, depth
        )
        _render_runs(runs, as_json, as_csv)


def _bench_local(
    settings: Settings, model: str, backend: str, n_prompt: int, n_gen: int, reps: int, depth: int
) -> list[BenchRun]:
    from dataclasses import replace

    from impetus_cli.runtime.manager import ModelManager

    # A context just large enough for the test keeps the KV cache small.
    settings = replace(settings, ctx=max(2048, depth + n_prompt + n_gen + 64), parallel=1)
    manager = ModelManager(settings)
    try:
        runs = []
        for local in _models_for(manager, model, backend):
            runs.append(_bench_one(manager, local, settings, n_prompt, n_gen, reps, depth))
            _save(settings, runs[-1])
        return runs
    finally:
        manager.close()


def _models_for(manager: ModelManager, name: str, backend: str) -> list[LocalModel]:
    if backend not in ("gguf", "mlx", "both"):
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
        err_console().print(
            f"[yellow]{name} is only local in {first.format} form: benchmarking that.[/]"
        )
    return list(by_format.values())


def _bench_one(
    manager: ModelManager,
    local: LocalModel,
    settings: Settings,
    n_prompt: int,
    n_gen: int,
    reps: int,
    depth: int,
) -> BenchRun:
    from rich.progress import Progress

    from impetus_cli.runtime import bench as protocol
    from impetus_cli.runtime.engines import load_engine
    from impetus_cli.runtime.hardware import detect
    from impetus_cli.runtime.inspect import inspect_model

    plan, info, hw = manager.plan(local.name), inspect_model(local.path), detect()
    with Progress(console=err_console(), transient=True) as bar:
        task = bar.add_task(f"loading {local.name}", total=None)
        engine = load_engine(plan, info)
        try:

            def step(test: str, rep: int, total: int) -> None:
                bar.update(task, description=f"{local.name} {test}", completed=rep, total=total)

            results = protocol.run_tests(
                engine, n_prompt=n_prompt, n_gen=n_gen, reps=reps, depth=depth, progress=step
            )
        finally:
            engine.close()
    expected, flags = _expectations(hw, info, depth, results)
    return protocol.BenchRun(
        time=time.time(),
        impetus_version=_version(),
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


def _version() -> str:
    from impetus_cli import __version__

    return __version__


def _expectations(hw, info, depth, results):  # type: ignore[no-untyped-def]
    """Expected tokens/s per test, and flags for results under 80% of it."""
    from impetus_cli.runtime import bench as protocol
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
        kind = "pp" if result.test.startswith("pp") else "tg"
        target = speeds.get(kind)
        if not target:
            continue
        expected[result.test] = target
        if result.mean < 0.8 * target:
            flags.append(
                f"{result.test}: {result.mean:.1f} tok/s is {result.mean / target:.0%} of the "
                f"expected {target:.1f}. {_likely_causes(hw)}"
            )
    return expected, tuple(flags)


def _likely_causes(hw) -> str:  # type: ignore[no-untyped-def]
    if hw.rosetta:
        return "Python runs under Rosetta: install an arm64 Python."
    if hw.apple_silicon:
        return "Likely causes: llama.cpp built without Metal, other load, Low Power Mode."
    return "Likely causes: other load on the CPU, too many threads, memory bandwidth shared."


def _save(settings: Settings, run: BenchRun) -> Path:
    from impetus_cli.runtime.fs import atomic_write_json

    settings.bench_dir.mkdir(parents=True, exist_ok=True)
    path = (
        settings.bench_dir
        / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(run.time))}-{run.model.replace('/', '_').replace(':', '_')}.json"
    )
    atomic_write_json(path, run.to_dict())
    return path


def _render_runs(runs: list[BenchRun], as_json: bool, as_csv: bool) -> None:
    if as_json:
        print_json([r.to_dict() for r in runs])
        return
    if as_csv:
        print("model,backend,test,mean_tps,stddev_tps,expected_tps,threads,gpu_layers")
        for run in runs:
            for r in run.results:
                print(
                    f"{run.model},{run.backend},{r.test},{r.mean:.2f},{r.stddev:.2f},"
                    f"{run.expected.get(r.test, '')},{run.threads},{run.gpu_layers}"
                )
        return
    from rich.table import Table

    table = Table(title="impetus bench")
    for col in ("model", "backend", "test", "t/s", "expected", "threads", "quant"):
        table.add_column(col, justify="right" if col in ("t/s", "expected", "threads") else "left")
    for run in runs:
        for r in run.results:
            exp = run.expected.get(r.test)
            table.add_row(
                run.model,
                run.backend,
                r.test,
                f"{r.mean:.1f} ± {r.stddev:.1f}",
                f"{exp:.1f}" if exp else "-",
                str(run.threads),
                run.quantization or "-",
            )
    console().print(table)
    hw = runs[0].hardware if runs else {}
    console().print(
        f"[dim]{hw.get('variant') or hw.get('cpu_name')} · {hw.get('memory_bytes', 0) / 1e9:.0f} GB[/]"
    )
    for run in runs:
        for flag in run.flags:
            console().print(f"[yellow]! {flag}[/]")


def _show_history(settings: Settings, as_json: bool) -> None:
    from impetus_cli.runtime.bench import BenchRun

    runs = []
    for path in sorted(settings.bench_dir.glob("*.json")):
        try:
            runs.append(BenchRun.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError):
            err_console().print(f"[yellow]skipping unreadable {path.name}[/]")
    if as_json:
        print_json([r.to_dict() for r in runs])
        return
    if not runs:
        console().print("No benchmark runs yet: run `impetus bench`.")
        return
    from rich.table import Table

    table = Table(title="benchmark history")
    for col in ("when", "model", "backend", "machine", "pp t/s", "tg t/s", "tg trend"):
        table.add_column(col)
    peak = max(
        (r.mean for run in runs for r in run.results if r.test.startswith("tg")), default=1.0
    )
    for run in runs:
        pp = next((r for r in run.results if r.test.startswith("pp")), None)
        tg = next((r for r in run.results if r.test.startswith("tg")), None)
        bar = "█" * round(20 * tg.mean / peak) if tg else ""
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M", time.localtime(run.time)),
            run.model,
            run.backend,
            str(run.hardware.get("variant") or run.hardware.get("cpu_name") or "-"),
            f"{pp.mean:.1f}" if pp else "-",
            f"{tg.mean:.1f}" if tg else "-",
            f"[cyan]{bar}[/]",
        )
    console().print(table)


def _bench_server(
    url: str,
    model: str | None,
    settings: Settings,
    parallel: int,
    n_gen: int,
    depths: str,
    as_json: bool,
    chars_per_token: float | None = None,
    sessions: int = 0,
) -> None:
    from rich.table import Table

    from impetus_cli.services.agentbench import run_agent_bench, summary_rows
    from impetus_cli.client import ImpetusClient

    client = ImpetusClient(url, api_key=settings.api_key)
    if model is None:
        ids = [m.get("id") for m in client.models()]
        if not ids:
            raise ImpetusError(
                f"{url} lists no models.", "Name one: impetus bench MODEL --server URL"
            )
        model = str(ids[0])
    try:
        levels = tuple(int(d) for d in depths.split(",") if d.strip())
    except ValueError:
        raise ImpetusError(
            f"--depths takes numbers: {depths!r}", "e.g. --depths 2048,8192"
        ) from None
    with err_console().status("benchmarking") as status:
        result = run_agent_bench(
            client,
            model,
            depths=levels,
            n_gen=n_gen,
            parallel=parallel,
            progress=lambda s: status.update(s),
            ratio=chars_per_token,
            sessions=sessions,
        )
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"{model} at {url}", show_header=False)
    for name, value in summary_rows(result):
        table.add_row(name, value)
    console().print(table)
