"""What speculation costs text that does not repeat its input, in the engine without a server.

The serve suite's prose and novel-code rows (edit_rows.py) run the same requests through two
servers side by side; this runs them without a server: Gemma 3 270M's GGUF engine with
``--speculative off`` and ``ngram`` in one process, over several seeds of the two prompts at
temperature 0.8, the order alternating per seed, and compares tokens over decode time (a
batch's rounding moves a sampled probability, so the two modes soon sample different texts
from one seed: hence several):

    .venv/bin/python benchmarks/sampled_engine.py --seeds 6
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import edit_rows, peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()

    from impetus_cli.runtime.engines.llama import LlamaEngine
    from impetus_cli.runtime.inspect import inspect_model
    from impetus_cli.runtime.types import SamplingParams
    from tests.fixtures.tiny_models import make_plan

    path = peers.gemma_path()
    info = inspect_model(path)
    plan = make_plan(path, info, n_ctx=4096)
    modes = ("off", "ngram")
    engines = {m: LlamaEngine.load(replace(plan, speculative=m), info) for m in modes}
    prompts = {"prose": edit_rows.PROSE, "novel code": edit_rows.CODE}
    # per (mode, prompt): tokens, decode seconds, drafted, accepted
    totals = {(m, k): [0.0, 0.0, 0.0, 0.0] for m in modes for k in prompts}
    try:
        for seed in range(1, args.seeds + 1):
            for name, prompt in prompts.items():
                for mode in modes if seed % 2 else modes[::-1]:
                    engine = engines[mode]
                    sampling = SamplingParams(max_tokens=args.tokens, temperature=0.8, seed=seed)
                    final = list(engine.generate(engine.tokenize(prompt), sampling))[-1]
                    total = totals[(mode, name)]
                    total[0] += final.completion_tokens
                    total[1] += final.completion_tokens / final.generation_tps
                    total[2] += final.drafted_tokens
                    total[3] += final.accepted_tokens
    finally:
        for engine in engines.values():
            engine.close()
    print(
        f"{args.seeds} seeds x {args.tokens} tokens, temperature 0.8, both engines in one process"
    )
    print("| text | off (tok/s) | ngram (tok/s) | drafts taken | ngram / off |")
    print("|---|---|---|---|---|")
    for name in prompts:
        off, on = totals[("off", name)], totals[("ngram", name)]
        off_tps, on_tps = off[0] / off[1], on[0] / on[1]
        taken = f"{on[3]:.0f} of {on[2]:.0f}"
        print(f"| {name} | {off_tps:.1f} | {on_tps:.1f} | {taken} | {on_tps / off_tps:.3f}x |")


if __name__ == "__main__":
    main()
