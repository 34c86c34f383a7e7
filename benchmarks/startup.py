"""Wall time of `impetus --help` and `impetus list` (goal: under 0.2 s).

Runs each command N times in a fresh process against an empty IMPETUS_HOME (plus the built-in
model), with Python's bytecode cache as a user's machine has it, and prints mean +- stddev and
the best run; and the same for a bare `python -c "import typer, rich"`, the floor any typer +
rich command line pays, which makes the ratio comparable across machines. Usage:

    .venv/bin/python benchmarks/startup.py [-r 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPETUS = str(Path(sys.executable).with_name("impetus"))
COMMANDS = (
    ("impetus --help", [IMPETUS, "--help"]),
    ("impetus list", [IMPETUS, "list"]),
    ("impetus list --json", [IMPETUS, "list", "--json"]),
    ('python -c "import typer, rich"', [sys.executable, "-c", "import typer, rich"]),
)


def time_command(argv: list[str], env: dict[str, str], reps: int) -> list[float]:
    samples = []
    for _ in range(reps + 1):  # the first run warms the OS file cache and is dropped
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return samples[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--reps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "IMPETUS_HOME": home, "NO_COLOR": "1"}
        # As users run it: Python caches compiled modules (__pycache__), which the first,
        # dropped run writes. An environment that forbids it compiles every module each time.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        print(f"{'command':<32} {'mean':>9} {'stddev':>9} {'best':>9}")
        for label, argv in COMMANDS:
            samples = time_command(argv, env, args.reps)
            print(
                f"{label:<32} {statistics.mean(samples) * 1000:7.0f}ms "
                f"{statistics.stdev(samples) * 1000:7.0f}ms {min(samples) * 1000:7.0f}ms"
            )


if __name__ == "__main__":
    main()
