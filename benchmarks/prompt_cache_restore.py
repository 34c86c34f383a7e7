"""Restoring a prompt from the prompt cache's tiers against evaluating it: the crossover the
GGUF engine's disk tier decides on (engines/prompt_tiers.Crossover), per model and prompt size.

For each model and prompt length N, on the engine directly (no server), time to first token of
a one-token continuation of an N-token prompt:
- cold: nothing cached, the prompt is evaluated (prefill);
- ram: the prompt left the only slot for another and comes back from the RAM tier;
- disk: the engine was closed (the prompt saved to disk) and a new one restores it.
Tokens per second = N / TTFT; the state's bytes per token say where larger models land.

    .venv/bin/python benchmarks/prompt_cache_restore.py [--tokens 1024,4096] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers
from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.types import SamplingParams
from tests.fixtures.tiny_models import make_plan, write_tiny_gguf

ONE = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
GB = 1_000_000_000


def engine(path: Path, n_ctx: int, cache: Path | None, ram: int) -> Any:
    from impetus_cli.runtime.engines.llama import LlamaEngine

    info = inspect_model(path)
    plan = replace(
        make_plan(path, info, n_ctx=n_ctx),
        cache_ram_bytes=ram,
        cache_disk_bytes=20 * GB if cache else 0,
        prompt_cache_dir=cache,
    )
    return LlamaEngine.load(plan, info)


def ttft(e: Any, tokens: list[int]) -> float:
    return float(list(e.generate(tokens, ONE))[-1].ttft_s)


def prompts(e: Any, n: int) -> tuple[list[int], list[int]]:
    """Two different n-token prompts (plus a token to continue the first with)."""
    words = " ".join(f"step {i}: read the file, then edit it." for i in range(n))
    other = " ".join(f"note {i}: the tests pass again." for i in range(n))
    a = [*e.tokenize(words)[:n], *e.tokenize(" next", special=False)[:1]]
    return a, e.tokenize(other)[:n]


def once(path: Path, n: int) -> dict[str, float]:
    """Cold, RAM and disk TTFTs of one n-token prompt, and the state's bytes."""
    n_ctx = n + 256
    with tempfile.TemporaryDirectory() as tmp:
        cold = engine(path, n_ctx, None, 0)
        a, b = prompts(cold, n)
        result = {"cold_s": ttft(cold, a)}
        cold.close()
        warm = engine(path, n_ctx, Path(tmp), 20 * GB)
        ttft(warm, a[:-1])
        ttft(warm, b)  # a's prompt leaves the only slot for the RAM tier
        result["ram_s"] = ttft(warm, a)
        result["state_bytes"] = float(warm.cache_tiers[0].bytes)
        warm.close()  # what the slot and the RAM tier hold goes to disk
        again = engine(path, n_ctx, Path(tmp), 20 * GB)
        result["disk_s"] = ttft(again, a)
        assert again.last_cached_tokens >= n - 1, "not restored"
        again.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1024,4096")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="impetus-restore-"))
    models = {
        "tiny (2 layers, f32)": write_tiny_gguf(tmp / "tiny.gguf", context_length=16384),
        "Gemma 3 270M Q4_K_M": peers.gemma_path(),
    }
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    print("| model | prompt tokens | KV state KB/token | cold (prefill) tok/s | RAM restore tok/s "
          "| disk restore tok/s | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, path in models.items():
        for n in (int(t) for t in args.tokens.split(",")):
            runs = [once(path, n) for _ in range(args.reps)]
            rate = {k: [n / r[k] for r in runs] for k in ("cold_s", "ram_s", "disk_s")}
            kb = runs[0]["state_bytes"] / n / 1000
            cells = [
                f"{statistics.fmean(v):.0f} ± {statistics.pstdev(v):.0f}" for v in rate.values()
            ]
            print(f"| {name} | {n} | {kb:.1f} | {' | '.join(cells)} | {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()
