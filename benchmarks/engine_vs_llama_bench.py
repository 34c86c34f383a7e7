"""Our GGUF engine against llama.cpp's own `llama-bench`, same model, threads and settings.

Rounds alternate (llama-bench, ours, llama-bench, ours ...) so drift in machine load hits both.
Measures pp512 and tg128 the llama-bench way (one warm-up, `--reps` repetitions, mean and
standard deviation; random tokens; tokenization and sampling untimed in pp), plus the prompt
speed of a 2.5k-token prompt (llama-bench runs pp2500 as a same-length reference) and the cost
of a follow-up turn that extends it by 40 tokens (prefix reuse: only the new tokens are
evaluated, asserted through the engine's own counters).

    .venv/bin/python benchmarks/build_llama_cpp.py        # once: builds llama-bench
    .venv/bin/python benchmarks/engine_vs_llama_bench.py [--rounds 2] [--reps 5] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers
from benchmarks.build_llama_cpp import build
from impetus_cli.runtime.bench import run_tests
from impetus_cli.runtime.engines.llama import LlamaEngine
from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.types import LoadPlan, LocalModel, SamplingParams

LONG, FOLLOW = 2500, 40
Samples = dict[str, list[float]]  # test -> tokens/s (or seconds) of each repetition


def llama_bench(binary: Path, model: Path, args: argparse.Namespace) -> Samples:
    argv = [str(binary), "-m", str(model), "-t", str(args.threads), "-p", f"512,{LONG}"]
    argv += ["-n", "128", "-r", str(args.reps), "-fa", "on" if args.flash else "off"]
    argv += ["-b", "2048", "-ub", "512", "-o", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    results: Samples = {}
    for row in json.loads(done.stdout):
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        results[test] = [float(x) for x in row["samples_ts"]]
    return results


def plan_for(model: Path, args: argparse.Namespace) -> tuple[LoadPlan, Any]:
    """A LoadPlan made by hand: the settings llama-bench uses, not the auto-tuner's."""
    info = inspect_model(model)
    local = LocalModel(
        name=model.name, format="gguf", path=model, origin="path", size_bytes=info.file_bytes
    )
    plan = LoadPlan(
        model=local,
        n_ctx=4096,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        n_batch=2048,
        n_ubatch=512,
        flash_attn=args.flash,
        kv_type="f16",
        n_parallel=1,
        weights_bytes=info.file_bytes,
        kv_bytes=0,
        compute_bytes=0,
    )
    return plan, info


def ours(model: Path, args: argparse.Namespace) -> Samples:
    plan, info = plan_for(model, args)
    engine = LlamaEngine.load(plan, info)
    try:
        results = {r.test: list(r.samples) for r in run_tests(engine, reps=args.reps)}
        results.update(long_prompt(engine, args.reps))
    finally:
        engine.close()
    return results


def long_prompt(engine: LlamaEngine, reps: int) -> Samples:
    """A cold 2.5k-token first turn, then a follow-up that adds 40 tokens to it; one warm-up,
    then reps repetitions, each with fresh tokens (nothing cached from the last one)."""
    rng = random.Random(7)
    greedy = SamplingParams(max_tokens=1, temperature=0)
    out: Samples = {"pp2500": [], "first_turn_s": [], "follow_up_s": [], "follow_up_evaluated": []}
    for rep in range(reps + 1):
        first = [rng.randrange(1000, 200_000) for _ in range(LONG)]
        follow = first + [rng.randrange(1000, 200_000) for _ in range(FOLLOW)]
        start = time.perf_counter()
        a = list(engine.generate(first, greedy))[-1]
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        b = list(engine.generate(follow, greedy))[-1]
        follow_s = time.perf_counter() - start
        if b.cached_tokens < LONG:
            raise SystemExit(f"the follow-up did not reuse the prefix: {b}")
        if rep:  # rep 0 is the warm-up
            out["pp2500"].append(a.prompt_tps)
            out["first_turn_s"].append(first_s)
            out["follow_up_s"].append(follow_s)
            out["follow_up_evaluated"].append(float(b.prompt_tokens - b.cached_tokens))
    return out


def summary(runs: list[Samples]) -> dict[str, dict[str, float]]:
    """Mean and stddev over every repetition of every round."""
    out = {}
    for test in runs[0]:
        values = [v for run in runs for v in run[test]]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        out[test] = {"mean": statistics.fmean(values), "stddev": sd, "n": len(values)}
    return out


def row(name: str, a: dict[str, float] | None, b: dict[str, float] | None, target: str) -> str:
    def cell(x: dict[str, float] | None) -> str:
        return f"{x['mean']:.1f} ± {x['stddev']:.1f}" if x else "-"

    ratio = f"{a['mean'] / b['mean']:.2f}x" if a and b else "-"
    return f"| {name} | {cell(a)} | {cell(b)} | {ratio} | {target} |"


def table(got: dict[str, dict[str, float]], ref: dict[str, dict[str, float]]) -> str:
    def secs(x: dict[str, float]) -> str:
        return f"{x['mean']:.3f} ± {x['stddev']:.3f}"

    return "\n".join(
        [
            "| measure | impetus | llama-bench | ratio | target |",
            "|---|---|---|---|---|",
            row("tg128 decode (tok/s)", got["tg128"], ref["tg128"], ">= 0.95x"),
            row("pp512 prompt (tok/s)", got["pp512"], ref["pp512"], "-"),
            row(f"{LONG}-token prompt (tok/s) vs pp512", got["pp2500"], ref["pp512"], ">= 0.9x"),
            row(f"{LONG}-token prompt (tok/s) vs pp{LONG}", got["pp2500"], ref["pp2500"], "-"),
            f"| first turn, {LONG} tokens (s) | {secs(got['first_turn_s'])} | - | - | - |",
            f"| follow-up turn, +{FOLLOW} tokens (s) | {secs(got['follow_up_s'])} | - | - "
            f"| evaluates {got['follow_up_evaluated']['mean']:.0f} new tokens only |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flash", dest="flash", action="store_false", help="flash attn off")
    parser.add_argument("--max-wait", type=float, default=300.0, help="wait for a quiet machine")
    parser.add_argument("--retries", type=int, default=2, help="re-measure a disturbed block")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    binary, model = build()["llama-bench"], peers.gemma_path()
    runs: dict[str, list[Samples]] = {"llama-bench": [], "impetus": []}
    quiet = peers.Quiet(args.max_wait, args.retries)
    for i in range(args.rounds):
        # ABBA: llama-bench first in odd rounds, ours first in even ones.
        order = ["llama-bench", "impetus"] if i % 2 == 0 else ["impetus", "llama-bench"]
        for name in order:
            print(f"round {i + 1}: {name}", flush=True)
            if name == "llama-bench":
                run = quiet.run(f"{name} round {i + 1}", lambda: llama_bench(binary, model, args))
            else:
                run = quiet.run(f"{name} round {i + 1}", lambda: ours(model, args))
            runs[name].append(run)
    got, ref = summary(runs["impetus"]), summary(runs["llama-bench"])
    print(
        f"\nGemma 3 270M Q4_K_M, {args.threads} threads, flash attention "
        f"{'on' if args.flash else 'off'}, {args.rounds} alternating rounds x {args.reps} reps"
    )
    print(table(got, ref))
    if args.out:
        info = binary.parent / "build-info.json"
        report = {
            "settings": vars(args) | {"out": str(args.out)},
            "model": str(model),
            "machine": peers.machine(),
            "llama_cpp_build": json.loads(info.read_text()) if info.exists() else None,
            "impetus": got,
            "llama_bench": ref,
            "runs": runs,
            "busy_during_run": quiet.log,
            "kept_although_disturbed": quiet.disturbed,
        }
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
