"""What one decode step costs by how many tokens it feeds (speculative.CPU_STEP_MULTIPLE).

A step that verifies a draft feeds the sampled token and the draft, with logits at every
position. This times llama_decode for such steps on Gemma 3 270M after 4000 tokens of context
(the median of ``--rounds`` runs per size), so the cost of a draft token, and of a step whose
size is not a multiple of four on the CPU, can be read off:

    .venv/bin/python benchmarks/step_cost.py
    .venv/bin/python benchmarks/step_cost.py --sizes 3,4,63,64,65
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers

CONTEXT = 4000
SIZES = "1,2,3,4,5,6,7,8,12,15,16,24,31,32,33,48,63,64,65"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=SIZES, help="tokens per step, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from impetus_cli.runtime.engines.llama_native import load_lib

    lib = load_lib()  # as the engine loads it (GOMP_SPINCOUNT set before the CPU backend)
    from llama_cpp import Llama

    llm = Llama(
        str(peers.gemma_path()),
        n_ctx=16384,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        flash_attn=True,
        verbose=False,
    )
    ctx = llm._ctx.ctx
    text = Path(__file__).read_bytes() * 40
    tokens = llm.tokenize(text)[: CONTEXT + 100]
    batch = lib.llama_batch_init(512, 0, 1)
    mem = lib.llama_get_memory(ctx)

    def put(start: int, n: int, every: bool) -> None:
        batch.n_tokens = n
        for i in range(n):
            batch.token[i], batch.pos[i] = tokens[start + i], start + i
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
            batch.logits[i] = every or i == n - 1

    for start in range(0, CONTEXT, 500):
        put(start, min(500, CONTEXT - start), False)
        lib.llama_decode(ctx, batch)

    def step(n: int) -> float:
        lib.llama_memory_seq_rm(mem, 0, CONTEXT, -1)
        put(CONTEXT, n, True)
        began = time.perf_counter()
        lib.llama_decode(ctx, batch)
        return time.perf_counter() - began

    print(
        f"Gemma 3 270M, {args.threads} threads, {CONTEXT} tokens of context, logits at every position"
    )
    print("| tokens in the step | ms (median) |\n|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        ms = statistics.median(step(n) for _ in range(args.rounds)) * 1000
        print(f"| {n} | {ms:.1f} |", flush=True)
    lib.llama_batch_free(batch)


if __name__ == "__main__":
    main()
