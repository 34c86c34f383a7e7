"""A GGUF model split across llama.cpp RPC workers on loopback, against the same model local.

For each model (the tiny 6-layer test GGUF, Gemma 3 270M Q4_K_M) and each setup (local; this
machine + 1 worker; this machine + 2 workers, all on loopback), llama-bench's protocol
(runtime/bench.py: a warm-up, then ``--reps`` timed pp and tg runs on random tokens) on the
engine `impetus serve` would use: LlamaEngine in-process when local, SplitEngine (a child
process holding the llama.cpp RPC client) when split. Workers are `impetus worker` processes
offering the same memory as this machine's budget, so the layers split evenly. On one machine
the parts take turns (a layer split is a pipeline), so this measures what the split adds: the
RPC round trips per token and per micro-batch, and the child process. Tokens per second depend
on what else the machine runs (processes that wait on sockets get the CPU sooner than one that
computes without pause); the CPU time per token, summed over every process taking part, does
not, and is the cost of the split itself.

    .venv/bin/python benchmarks/rpc.py [--reps 3] [--threads 2] [--pp 512] [--tg 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers
from impetus_cli.runtime import bench, hardware, rpc
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.engines import load_engine
from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.tuning import plan_load
from impetus_cli.runtime.types import LocalModel
from tests.fixtures.tiny_models import write_tiny_gguf

BUDGET = 2_000_000_000  # this machine's and each worker's: an even split


@contextmanager
def workers(count: int, threads: int) -> Iterator[list[str]]:
    procs, endpoints = [], []
    try:
        for _ in range(count):
            port = peers.free_port()
            cmd = [sys.executable, "-m", "impetus_cli.cli", "worker", "--port", str(port)]
            cmd += ["--mem", str(BUDGET), "--threads", str(threads)]
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            endpoints.append(f"127.0.0.1:{port}")
        for endpoint in endpoints:
            _wait(endpoint)
        yield endpoints
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def _wait(endpoint: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            rpc.probe(endpoint, timeout=1.0)
            return
        except rpc.WorkerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def cpu_seconds() -> float:
    """User + system CPU time of this process and every process it started (the workers, the
    split model's child): the work a token costs, whatever else the machine is running."""
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def measure(path: Path, endpoints: list[str], args: argparse.Namespace) -> dict[str, object]:
    info = inspect_model(path)
    model = LocalModel(path.name, "gguf", path, "path", info.file_bytes)
    settings = dataclasses.replace(
        load_settings(), rpc=tuple(endpoints), ctx=4096, parallel=1, threads=args.threads
    )
    plan = plan_load(model, info, hardware.detect(), settings, BUDGET)
    engine = load_engine(plan, info)
    found: dict[str, object] = {}
    try:
        for n_prompt, n_gen in ((args.pp, 0), (0, args.tg)):
            before = cpu_seconds()
            (result,) = bench.run_tests(engine, n_prompt=n_prompt, n_gen=n_gen, reps=args.reps)
            tokens = (args.reps + 1) * (n_prompt + n_gen)  # the warm-up, then the repetitions
            found[result.test] = result.samples
            found[f"{result.test} cpu"] = 1000 * (cpu_seconds() - before) / tokens
    finally:
        engine.close()
    layers = " / ".join(f"{p.last - p.first}" for p in plan.placement) or str(info.n_layers + 1)
    return {"layers": layers, **found}


def row(name: str, setup: str, found: dict[str, object], base: dict[str, object]) -> str:
    cells = [name, setup, str(found["layers"])]
    for key in (k for k in found if k != "layers"):
        if key.endswith(" cpu"):
            cells.append(f"{found[key]:.2f} ({found[key] / base[key]:.2f}x)")  # type: ignore[operator]
            continue
        samples = list(found[key])  # type: ignore[call-overload]
        mean = statistics.fmean(samples)
        sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
        ratio = mean / statistics.fmean(list(base[key]))  # type: ignore[call-overload]
        cells.append(f"{mean:.1f} ± {sd:.1f} ({ratio:.2f}x)")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--tg", type=int, default=128)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="impetus-rpc-bench-"))
    os.environ.setdefault("IMPETUS_HOME", str(tmp / "home"))
    models = {
        "tiny (6 layers, f32)": write_tiny_gguf(tmp / "tiny-6.gguf", n_layers=6),
        "Gemma 3 270M Q4_K_M": peers.gemma_path(),
    }
    print(f"python {' '.join(sys.argv)}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load}")
    print(f"{args.threads} thread(s) per part; workers offer {BUDGET / 1e9:.0f} GB each")
    pp, tg = f"pp{args.pp}", f"tg{args.tg}"
    print(
        f"| model | setup | layers per part | {pp} t/s | {pp} CPU ms/token | {tg} t/s | {tg} CPU ms/token |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, path in models.items():
        base = measure(path, [], args)
        print(row(name, "local", base, base), flush=True)
        for count in (1, 2):
            with workers(count, args.threads) as endpoints:
                found = measure(path, endpoints, args)
            label = f"{count} worker{'s' if count > 1 else ''} + local"
            print(row(name, label, found, base), flush=True)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
