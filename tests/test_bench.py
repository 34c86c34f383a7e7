"""`impetus bench`: the protocol's structure on a real engine (never thresholds on speed), the
expectation model and flags as pure functions, history, and `--server` against a real server."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from impetus_cli.cli import app
from impetus_cli.client import ImpetusClient
from impetus_cli.runtime.bench import BenchRun, run_tests
from impetus_cli.runtime.hardware import parse_macos
from impetus_cli.runtime.types import ModelInfo
from impetus_cli.services.agentbench import run_agent_bench, summary_rows
from impetus_cli.services.bench import expectations

DATA = Path(__file__).parent / "data" / "macos"


def test_protocol_runs_warmup_then_reps_for_pp_and_tg(tiny_gguf_engine: Any) -> None:
    steps: list[tuple[str, int, int]] = []
    results = run_tests(
        tiny_gguf_engine, n_prompt=64, n_gen=16, reps=3, progress=lambda *a: steps.append(a)
    )
    assert [r.test for r in results] == ["pp64", "tg16"]
    assert all(len(r.samples) == 3 and all(s > 0 for s in r.samples) for r in results)
    assert steps == [("pp64", i, 3) for i in range(3)] + [("tg16", i, 3) for i in range(3)]
    depth = run_tests(tiny_gguf_engine, n_prompt=32, n_gen=8, reps=2, depth=128)
    assert [r.test for r in depth] == ["pp32 @ d128", "tg8 @ d128"] and depth[0].depth == 128


def test_generation_counts_exactly_n_tokens_past_eos(tiny_gguf_engine: Any) -> None:
    from impetus_cli.runtime.types import SamplingParams

    final = list(
        tiny_gguf_engine.generate(
            [1, 5, 9], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
        )
    )[-1]
    assert final.completion_tokens == 40


def info(weights: int = 4_000_000_000) -> ModelInfo:
    return ModelInfo(
        path=Path("m.gguf"),
        format="gguf",
        architecture="llama",
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        embedding_length=4096,
        context_length=8192,
        file_bytes=weights,
        n_params=6_740_000_000,
    )


def mac(key: str) -> Any:
    return parse_macos(
        (DATA / f"{key}.sysctl.txt").read_text(), (DATA / f"{key}.system_profiler.json").read_text()
    )


def result(test: str, tps: float) -> Any:
    from impetus_cli.runtime.bench import BenchResult

    return BenchResult(
        test,
        512 if test.startswith("pp") else 0,
        128 if test.startswith("tg") else 0,
        0,
        (tps, tps),
    )


def test_results_under_80_percent_of_the_chips_expectation_are_flagged() -> None:
    hw = mac("m1-max")
    expected, flags = expectations(hw, info(), 0, (result("pp512", 500.0), result("tg128", 20.0)))
    assert expected["tg128"] > 40 and expected["pp512"] > 300
    assert len(flags) == 1 and flags[0].startswith("tg128") and "Metal" in flags[0]


def test_rosetta_is_named_as_the_likely_cause() -> None:
    hw = replace(mac("m1-rosetta"))
    _, flags = expectations(hw, info(), 0, (result("tg128", 1.0),))
    assert "Rosetta" in flags[0]


def test_bench_cli_saves_runs_and_shows_history(tiny_gguf: Path, impetus_home: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["bench", str(tiny_gguf), "-p", "32", "-n", "8", "-r", "2", "--json"])
    assert out.exit_code == 0, out.output
    run = json.loads(out.stdout)[0]
    for key in (
        "backend",
        "hardware",
        "threads",
        "gpu_layers",
        "n_batch",
        "n_ubatch",
        "flash_attn",
        "quantization",
        "n_params",
        "model_bytes",
        "impetus_version",
    ):
        assert key in run
    tests = ["pp32", "tg8", "edit256 off", "edit256 ngram"]  # the edit test, both ways
    assert [r["test"] for r in run["results"]] == tests
    saved = list((impetus_home / "bench").glob("*.json"))
    assert (
        len(saved) == 1
        and BenchRun.from_dict(json.loads(saved[0].read_text())).model == run["model"]
    )
    history = runner.invoke(app, ["bench", "--history"])
    assert history.exit_code == 0 and "tg t/s" in history.output
    csv = runner.invoke(app, ["bench", str(tiny_gguf), "-p", "16", "-n", "4", "-r", "1", "--csv"])
    assert csv.stdout.splitlines()[0].startswith("model,backend,test,mean_tps")
    # The prompt cache is on by default, but the bench neither keeps nor restores its prompts
    # (they repeat from run to run: a restored one would read as a slow prefill).
    assert not list((impetus_home / "prompt-cache").rglob("*.*"))


def test_agent_benchmark_against_a_real_server(tiny_server: str) -> None:
    bench = run_agent_bench(
        ImpetusClient(tiny_server), "tiny", depths=(256, 512), n_gen=16, parallel=2
    )
    assert set(bench.first_turn) == {256, 512}
    assert bench.follow_up[512].prompt_tokens > bench.first_turn[512].prompt_tokens
    assert bench.decode is not None and bench.decode.completion_tokens > 0
    assert len(bench.parallel) == 2 and bench.parallel_aggregate_tps > 0
    assert any("follow-up" in name for name, _ in summary_rows(bench))


def test_calibrated_prompts_grow_by_the_depth_asked_and_decode_ends_at_the_last_token(
    tiny_server: str,
) -> None:
    bench = run_agent_bench(
        ImpetusClient(tiny_server), "tiny", depths=(256, 512), n_gen=16, parallel=2
    )
    grown = bench.first_turn[512].prompt_tokens - bench.first_turn[256].prompt_tokens
    assert abs(grown - 256) < 26, grown  # the template's and nonce's tokens cancel out
    d = bench.decode
    assert d is not None and d.ttft_s <= d.last_token_s <= d.total_s
    assert d.decode_tps == (d.completion_tokens - 1) / (d.last_token_s - d.ttft_s)


def test_bench_server_json_has_what_the_serve_vs_peers_suite_reads(tiny_server: str) -> None:
    """benchmarks/serve_vs_peers.py runs this command against every server and maps its JSON."""
    sizes = ["--depths", "128,256", "-n", "8", "--parallel", "2", "--chars-per-token", "1.5"]
    sizes += ["--sessions", "3"]
    out = CliRunner().invoke(app, ["bench", "tiny", "--server", tiny_server, *sizes, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["chars_per_token"] == 1.5
    for depth in ("128", "256"):
        first, follow = data["first_turn"][depth], data["follow_up"][depth]
        assert follow["prompt_tokens"] > first["prompt_tokens"] > 0 and first["ttft_s"] > 0
    assert data["decode"]["completion_tokens"] == 8 and data["decode_tps"] > 0  # ignore_eos
    assert [s["completion_tokens"] for s in data["parallel"]] == [8, 8]
    assert data["parallel_aggregate_tps"] > 0 and data["parallel_worst_ttft_s"] > 0
    one, _, three = data["sessions"]  # instructions of the first depth and a file as long
    assert one["prompt_tokens"] > 2 * 100 and three["ttft_s"] > 0
    assert abs(one["prompt_tokens"] - three["prompt_tokens"]) < 20  # same shape, new task
    assert data["session_follow_up"]["prompt_tokens"] > one["prompt_tokens"]


def test_serve_vs_peers_writes_its_table_between_the_markers_only(tmp_path: Path) -> None:
    """--from-json --write renders a saved run into BENCHMARKS.md and leaves the rest alone."""
    from benchmarks import serve_vs_peers as suite

    saved = Path(suite.__file__).parent / "results" / "serve_vs_peers-2026-11-25b.json"
    report = json.loads(saved.read_text())
    table = suite.markdown(report)
    assert "| decode (tok/s) | 87.4 ± 4.8 | 90.0 ± 1.7 | 70.6 ± 0.7 | 0.97x | 0.78x |" in table
    assert "627 / 611 = 1.03x" in table

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\nbefore\n\n{suite.BEGIN}\nold table\n{suite.END}\n\nafter\n")
    suite.write_section(doc, f"{suite.header(report)}\n\n{table}")
    text = doc.read_text()
    assert "old table" not in text and "- command: `.venv/bin/python benchmarks/" in text
    assert text.startswith("# Benchmarks\n\nbefore\n\n")
    assert text.endswith(f"{suite.END}\n\nafter\n")
    suite.write_section(doc, f"{suite.header(report)}\n\n{table}")
    assert doc.read_text() == text  # rewriting the same run changes nothing

    fresh = tmp_path / "new.md"
    fresh.write_text("# Benchmarks\n")
    suite.write_section(fresh, "table")
    assert fresh.read_text() == f"# Benchmarks\n\n{suite.BEGIN}\ntable\n{suite.END}\n"
