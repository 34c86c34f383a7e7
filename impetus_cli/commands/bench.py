"""`impetus bench`: how fast this machine runs a model, and how fast it should.

Local mode runs llama-bench's protocol on our engines (services/bench.py); ``--server URL``
measures a running OpenAI-compatible server the way an agent uses it (services/agentbench.py);
``--history`` shows past runs saved under IMPETUS_HOME/bench/. This module parses and renders.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from impetus_cli.commands._options import JsonOpt
from impetus_cli.commands._ui import console, err_console, print_json
from impetus_cli.errors import ImpetusError

if TYPE_CHECKING:
    from impetus_cli.runtime.bench import BenchRun
    from impetus_cli.runtime.config import Settings


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
    edit: Annotated[
        int,
        typer.Option(
            "--edit",
            min=0,
            help="Tokens of the edit test: a reply that copies its prompt, with and without "
            "speculative decoding, and the share of drafts accepted (0: skip it).",
        ),
    ] = 256,
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
            settings, model or settings.default_model, backend, n_prompt, n_gen, reps, depth, edit
        )
        _render_runs(runs, as_json, as_csv)


def _bench_local(
    settings: Settings,
    model: str,
    backend: str,
    n_prompt: int,
    n_gen: int,
    reps: int,
    depth: int,
    edit: int,
) -> list[BenchRun]:
    from rich.progress import Progress

    from impetus_cli.services.bench import bench_local

    with Progress(console=err_console(), transient=True) as bar:
        task = bar.add_task("loading", total=None)

        def step(name: str, test: str, rep: int, total: int) -> None:
            bar.update(task, description=f"{name} {test}", completed=rep, total=total or None)

        return bench_local(
            settings,
            model,
            backend,
            n_prompt,
            n_gen,
            reps,
            depth,
            step,
            lambda text: err_console().print(f"[yellow]{text}[/]"),
            edit=edit,
        )


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
            accepted = f" ({r.acceptance:.0%} of drafts accepted)" if r.acceptance else ""
            table.add_row(
                run.model,
                run.backend,
                r.test + accepted,
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
    from impetus_cli.services.bench import history

    runs, skipped = history(settings)
    for name in skipped:
        err_console().print(f"[yellow]skipping unreadable {name}[/]")
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

    from impetus_cli.client import ImpetusClient
    from impetus_cli.services.agentbench import run_agent_bench, summary_rows

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
