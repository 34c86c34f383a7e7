"""What other conversations' cached cells cost a new prompt, with and without parking them.

In llama.cpp's unified KV cache a prompt's micro-batches attend over every occupied cell (the
other sequences' are masked out, but still visited). Our GGUF engine parks idle sequences out of
the cache before a long prompt when it has snapshot room (llama_snapshots.py). This loads Gemma
3 270M with 4 sequences of 16k tokens, then times a cold ``--prompt``-token prompt after each of
``--steps`` other conversations of ``--idle`` tokens has been cached, once with no snapshot room
(the idle cells stay) and once with room to park them; ``--reps`` times, alternating, means.

    .venv/bin/python benchmarks/idle_cells.py [--prompt 2000] [--idle 12000] [--steps 3] [--reps 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers
from benchmarks.engine_vs_llama_bench import plan_for
from impetus_cli.runtime.engines.llama import LlamaEngine
from impetus_cli.runtime.types import SamplingParams


def run(args: argparse.Namespace, room: int) -> list[float]:
    base, info = plan_for(peers.gemma_path(), argparse.Namespace(threads=args.threads, flash=True))
    plan = dataclasses.replace(base, n_ctx=16384, n_parallel=4, n_batch=512, snapshot_bytes=room)
    engine = LlamaEngine.load(plan, info)
    rng = random.Random(1)
    one = SamplingParams(max_tokens=1, temperature=0)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(1000, 200_000) for _ in range(n)]

    seconds = []
    try:
        list(engine.generate(tokens(32), one))  # warm-up
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            list(engine.generate(tokens(args.prompt), one))
            seconds.append(time.perf_counter() - start)
            list(engine.generate(tokens(args.idle), one))  # one more idle conversation
    finally:
        engine.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=12000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    kept, parked = [], []
    for _ in range(args.reps):
        kept.append(run(args, 0))
        parked.append(run(args, 2_000_000_000))
    print(f"| idle cells | {args.prompt}-token prompt, idle kept (s) | idle parked (s) |")
    print("|---|---|---|")
    for step in range(args.steps + 1):
        a = statistics.fmean(r[step] for r in kept)
        b = statistics.fmean(r[step] for r in parked)
        print(f"| {step * args.idle} | {a:.2f} | {b:.2f} |")


if __name__ == "__main__":
    main()
