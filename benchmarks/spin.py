"""Decode beside other work: libgomp's spin before a waiting thread sleeps (GOMP_SPINCOUNT).

llama.cpp's CPU threads meet at an OpenMP barrier for every step of the graph. The engine sets
GOMP_SPINCOUNT=1000 (llama_native.load_lib) where libgomp would spin 300000 times (its default
when there are no more threads than cores). This measures both values with `impetus bench` (pp
and tg, llama-bench's method) on the built-in model, alternating them each round, first on a
quiet machine, then beside ``--hogs`` busy processes (`yes > /dev/null`, as a user's build or
another app would be), and prints tokens/s with the 1-minute load average. Usage:

    .venv/bin/python benchmarks/spin.py [--rounds 3] [--hogs 2] [-p 512] [-n 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers

SPINS = ("1000", "300000")  # ours, libgomp's default


def bench(spin: str, args: argparse.Namespace) -> dict[str, float]:
    """One `impetus bench` in a fresh process (libgomp reads the variable once, at load)."""
    impetus = Path(sys.executable).with_name("impetus")
    argv = [str(impetus), "bench", "-p", str(args.p), "-n", str(args.n), "-r", str(args.reps)]
    argv += ["--edit", "0", "--threads", str(args.threads), "--json"]
    with tempfile.TemporaryDirectory() as home:  # runs are saved there, not in the user's history
        env = {**os.environ, "GOMP_SPINCOUNT": spin, "NO_COLOR": "1", "IMPETUS_HOME": home}
        out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)[0]["results"]
    speed = {row["test"]: float(row["mean"]) for row in rows}
    return {"pp": speed[f"pp{args.p}"], "tg": speed[f"tg{args.n}"], "load": os.getloadavg()[0]}


@contextmanager
def hogs(n: int) -> Iterator[None]:
    procs = [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, spins alternating")
    parser.add_argument("--hogs", type=int, default=2, help="busy processes in the second part")
    parser.add_argument("-p", type=int, default=512, help="prompt tokens (pp test)")
    parser.add_argument("-n", type=int, default=128, help="generated tokens (tg test)")
    parser.add_argument("--reps", type=int, default=2, help="impetus bench -r")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": peers.machine(), "settings": vars(args), "parts": {}}
    for part, busy in (("quiet", 0), (f"beside {args.hogs} busy processes", args.hogs)):
        samples: dict[str, list[dict[str, float]]] = {spin: [] for spin in SPINS}
        with hogs(busy):
            for rnd in range(args.rounds):
                order = SPINS if rnd % 2 == 0 else SPINS[::-1]
                for spin in order:
                    samples[spin].append(bench(spin, args))
                    print(f"{part}, round {rnd + 1}, spin {spin}: {samples[spin][-1]}", flush=True)
        report["parts"][part] = samples
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"\n| machine | GOMP_SPINCOUNT | pp{args.p} (tok/s) | tg{args.n} (tok/s) | load (1 min) |"
    )
    print("|---|---|---|---|---|")
    for part, samples in report["parts"].items():
        for spin, runs in samples.items():
            cells = [
                f"{statistics.fmean(r[k] for r in runs):.1f} "
                f"({min(r[k] for r in runs):.1f}-{max(r[k] for r in runs):.1f})"
                for k in ("pp", "tg", "load")
            ]
            print(f"| {part} | {spin} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
