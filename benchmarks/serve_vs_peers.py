"""`impetus serve` against llama.cpp's `llama-server` and `python -m llama_cpp.server`.

The same model (Gemma 3 270M Q4_K_M), threads and context for all three, each started in turn
as a subprocess and measured with `impetus bench --server URL --json` (impetus_cli/agentbench.py:
streaming requests shaped like a coding agent's). The order of the servers rotates every
repetition so that drift in machine load hits all of them. Per server and repetition:

- first turn: time to first token of a ~2.6k-token agent-like prompt (coding-assistant
  instructions plus a request), cold (a unique first line: nothing cached), and of an ~8k one;
- follow-up: time to first token of the 2.6k conversation plus a reply and one short turn;
- decode: tokens/s of one 128-token streamed reply (first token to last);
- sessions: three sessions of one agent (new tasks) that share the 2.6k-token instructions, each
  followed by a tool result as long; time to first token of the first session (nothing
  cached) and of the third (the instructions could come from the cache), then of the first
  session's follow-up (its own cache, if the server kept it through the two others);
- four streams: four concurrent 128-token streams, aggregate tokens/s and the worst TTFT;
- RSS of the loaded server; for impetus also an idle start with no model: RSS and the time from
  process start to the first 200 from /health.

    .venv/bin/python benchmarks/build_llama_cpp.py       # once: builds llama-server
    .venv/bin/python benchmarks/serve_vs_peers.py [--reps 3] [--out results.json] [--write]
    .venv/bin/python benchmarks/serve_vs_peers.py --quick  # smoke run, ~30 s
    .venv/bin/python benchmarks/serve_vs_peers.py --from-json results.json --write

`--write` puts the command, the machine and the table of ratios into BENCHMARKS.md, between its
serve_vs_peers markers (the rest of the file is left as it is); `--from-json` renders a saved
run instead of measuring.

`python -m llama_cpp.server` needs llama-cpp-python's server extras; without them that server
is skipped (and said so): pip install uvicorn fastapi sse-starlette starlette-context
pydantic-settings   (or: pip install 'llama-cpp-python[server]', which may rebuild it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import edit_rows, peers, tiers_rows  # servers, measurements; --tiers, --edit

ORDER = ("impetus", "llama-server", "llama-cpp-python")
TARGETS = {  # measure -> (impetus / llama-server target, higher is better?)
    "decode_tps": (">= 0.95x", True),
    "first_ttft_s": ("<= 1.1x", False),
    "follow_ttft_s": ("<= 1.2x", False),
    "deep_ttft_s": ("<= 1.1x", False),
    "session1_ttft_s": ("-", False),
    "session3_ttft_s": ("-", False),
    "session_follow_ttft_s": ("-", False),
    "parallel_tps": (">= 0.9x", True),
    "parallel_worst_ttft_s": ("-", False),
    "rss_mb": ("-", False),
    **tiers_rows.TARGETS,
    **edit_rows.TARGETS,
}
LABELS = {
    "decode_tps": "decode (tok/s)",
    "first_ttft_s": "first-turn TTFT, {first_tokens} tokens (s)",
    "follow_ttft_s": "follow-up TTFT, +{follow_new} tokens (s)",
    "deep_ttft_s": "first-turn TTFT, {deep_tokens} tokens (s)",
    "session1_ttft_s": "session 1 of 3, {session_tokens} tokens: TTFT (s)",
    "session3_ttft_s": "session 3, same instructions, new task: TTFT (s)",
    "session_follow_ttft_s": "session 1 follow-up after sessions 2 and 3: TTFT (s)",
    "parallel_tps": "4 streams, aggregate (tok/s)",
    "parallel_worst_ttft_s": "4 streams, worst TTFT (s)",
    "rss_mb": "RSS with the model loaded (MB)",
    **tiers_rows.LABELS,
    **edit_rows.LABELS,
}


BEGIN = "<!-- serve_vs_peers: begin (written by benchmarks/serve_vs_peers.py --write) -->"
END = "<!-- serve_vs_peers: end -->"


def main() -> None:
    args = parse_args()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        report = measure(args)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
            print(f"\nresults: {args.out}")
    print(f"\n{header(report)}\n\n{markdown(report)}")
    if args.write:
        write_section(args.write, f"{header(report)}\n\n{markdown(report)}")
        print(f"\nwritten to {args.write}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = peers.gemma_path()
    servers = [s for s in ORDER if s not in args.skip]
    if "llama-cpp-python" in servers and not server_extras_installed():
        print(
            "skipping python -m llama_cpp.server: its extras are not installed "
            "(pip install uvicorn fastapi sse-starlette starlette-context pydantic-settings)",
            flush=True,
        )
        servers.remove("llama-cpp-python")
    binary = args.llama_server
    if "llama-server" in servers and binary is None:
        from benchmarks.build_llama_cpp import build

        binary = build()["llama-server"]
    logs = Path(tempfile.mkdtemp(prefix="impetus-serve-bench-"))
    started = time.time()
    load_before = os.getloadavg()
    samples: dict[str, list[dict[str, float]]] = {s: [] for s in servers}
    idle: list[dict[str, float]] = []
    quiet = peers.Quiet(args.max_wait, args.retries)
    for rep in range(0 if args.only_edit else args.reps):
        order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
        if "impetus" in servers and not args.only_tiers:
            print(f"rep {rep + 1}: impetus idle start", flush=True)
            log = logs / f"idle-{rep}.log"
            idle.append(quiet.run(f"idle rep {rep + 1}", partial(peers.measure_idle, args, log)))
        for name in order:
            print(f"rep {rep + 1}: {name}", flush=True)
            argv = peers.command(name, args, model, binary)
            log = logs / f"{name}-{rep}.log"
            measure = partial(peers.measure_server, name, argv, args, rep, log)
            result = {} if args.only_tiers else quiet.run(f"{name} rep {rep + 1}", measure)
            if args.tiers and name != "llama-cpp-python":
                argv = tiers_rows.command(name, args, model, binary)
                tiers = partial(tiers_rows.measure_tiers, name, argv, args, log)
                result |= quiet.run(f"{name} rep {rep + 1} tiers", tiers)
            samples[name].append(result)
            print("   " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()), flush=True)
    edits = edit_rows.measure(args, binary, logs, servers) if args.edit else {}
    add_rows(samples, edit_rows.rows(edits))
    report = summarize(samples, idle, args, model, servers, binary)
    report["edit_variants"] = edits
    report["elapsed_s"] = round(time.time() - started, 1)
    report["loadavg_before_after"] = [load_before, os.getloadavg()]
    report["logs"] = str(logs)
    report["busy_during_run"] = quiet.log
    report["kept_although_disturbed"] = quiet.disturbed
    report["command"] = shlex.join(
        [".venv/bin/python", "benchmarks/serve_vs_peers.py", *sys.argv[1:]]
    )
    return report


def add_rows(
    samples: dict[str, list[dict[str, float]]], rows: dict[str, list[dict[str, float]]]
) -> None:
    """Merge rows measured apart (edit_rows.py) into each server's repetitions."""
    for name, runs in rows.items():
        mine = samples.setdefault(name, [])
        for i, row in enumerate(runs):
            if i < len(mine):
                mine[i] |= row
            else:
                mine.append(row)


def write_section(path: Path, text: str) -> None:
    """Replace what lies between the markers in `path` (or append them with the text), atomically."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    start, end = old.find(BEGIN), old.find(END)
    if start >= 0 and end > start:
        new = old[:start] + block + old[end + len(END) :]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (servers alternate)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ctx", type=int, default=16384, help="context per sequence for every server"
    )
    parser.add_argument("--first-tokens", type=int, default=2600, help="size of the first turn")
    parser.add_argument(
        "--deep-tokens", type=int, default=8000, help="a second, longer cold first turn (0: none)"
    )
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4, help="parallel streams")
    parser.add_argument(
        "--sessions", type=int, default=3, help="sessions sharing instructions (0: skip)"
    )
    parser.add_argument("--parallel", type=int, help="impetus serve --parallel (default: its own)")
    parser.add_argument("--skip", action="append", default=[], choices=ORDER)
    parser.add_argument("--tiers", action="store_true", help="add the prompt-cache rows")
    parser.add_argument(
        "--llama-server", type=Path, help="this llama-server binary (default: build_llama_cpp.py's)"
    )
    parser.add_argument("--only-tiers", action="store_true", help="the prompt-cache rows only")
    parser.add_argument(
        "--edit", action="store_true", help="add the speculative-decoding rows (edit_rows.py)"
    )
    parser.add_argument("--only-edit", action="store_true", help="the speculative rows only")
    parser.add_argument(
        "--all-types", action="store_true", help="edit rows: every llama-server n-gram type"
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help="seconds to wait for other busy processes before each server (then warn)",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-measure a disturbed server")
    parser.add_argument("--quick", action="store_true", help="1 rep, small prompts: a smoke run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--write",
        type=Path,
        nargs="?",
        const=Path(__file__).resolve().parents[1] / "BENCHMARKS.md",
        help="put the command, machine and table into this file (default BENCHMARKS.md)",
    )
    parser.add_argument("--from-json", type=Path, help="render a saved --out file, no measuring")
    args = parser.parse_args()
    args.chars_per_token = 0.0  # measured on the first server that reports usage
    args.tiers = args.tiers or args.only_tiers
    args.edit = args.edit or args.only_edit
    if args.quick:
        args.reps, args.first_tokens, args.decode_tokens, args.max_wait = 1, 600, 32, 0.0
        args.deep_tokens, args.sessions = 0, 0
    return args


def server_extras_installed() -> bool:
    return all(
        importlib.util.find_spec(m) is not None
        for m in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
    )


def stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "stddev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarize(
    samples: dict[str, list[dict[str, float]]],
    idle: list[dict[str, float]],
    args: argparse.Namespace,
    model: Path,
    servers: list[str],
    binary: Path | None,
) -> dict[str, Any]:
    table = {
        name: {key: stats([s[key] for s in runs if key in s]) for key in runs[0]}
        for name, runs in samples.items()
        if runs
    }
    return {
        "machine": peers.machine(),
        "model": str(model),
        "settings": {
            "threads": args.threads,
            "ctx": args.ctx,
            "reps": args.reps,
            "first_tokens_target": args.first_tokens,
            "decode_tokens": args.decode_tokens,
            "deep_tokens": args.deep_tokens,
            "streams": args.streams,
            "sessions": args.sessions,
        },
        "commands": {s: peers.command(s, args, model, binary, port=0) for s in servers},
        "results": table,
        "idle": {k: stats([i[k] for i in idle]) for k in idle[0]} if idle else {},
        "samples": samples,
        "python": platform.python_version(),
    }


def header(report: dict[str, Any]) -> str:
    """The command and the machine, to go with the table into BENCHMARKS.md."""
    m = report["machine"]
    return (
        f"- command: `{report['command']}` ({report['elapsed_s']:.0f} s)\n"
        f"- machine: {m['cpu']}, {m['cores']} cores / {m['threads']} threads, {m['ram_gb']} GiB "
        f"RAM, {m['os']}, Python {m['python']}, "
        f"llama-cpp-python {m['versions']['llama-cpp-python']}"
    )


def cell(entry: dict[str, float] | None, digits: int) -> str:
    if not entry:
        return "not measured"
    sd = f" ± {entry['stddev']:.{digits}f}" if entry["n"] > 1 else ""
    return f"{entry['mean']:.{digits}f}{sd}"


def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
    if not a or not b or not b["mean"]:
        return "-"
    return f"{a['mean'] / b['mean']:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    ref = res.get("llama-server", {})
    imp = res.get("impetus", {})
    lcp = res.get("llama-cpp-python", {})
    fmt = {
        "first_tokens": round(res_mean(res, "first_prompt_tokens")),
        "follow_new": round(res_mean(res, "follow_new_tokens")),
        "deep_tokens": round(res_mean(res, "deep_prompt_tokens")),
        "session_tokens": round(res_mean(res, "session_prompt_tokens")),
        "streams": report["settings"]["streams"],
        **edit_rows.label_values(res),
    }
    lines = [
        "| measure | impetus | llama-server | llama-cpp-python | impetus / llama-server "
        "| llama-cpp-python / llama-server | target (impetus) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        if key == "deep_ttft_s" and not fmt["deep_tokens"]:
            continue  # not asked for (--deep-tokens)
        if not any(key in r for r in res.values()):
            continue  # not measured in this run (--sessions 0, --only-tiers, no --tiers)
        digits = 2 if key.endswith(("_s", "_x")) else 1
        lines.append(
            f"| {label.format(**fmt)} | {cell(imp.get(key), digits)} "
            f"| {cell(ref.get(key), digits)} | {cell(lcp.get(key), digits)} "
            f"| {ratio(imp.get(key), ref.get(key))} | {ratio(lcp.get(key), ref.get(key))} "
            f"| {TARGETS[key][0]} |"
        )
    idle = report["idle"]
    if idle:
        lines.append(
            f"| impetus idle RSS, no model (MB) | {cell(idle['rss_mb'], 1)} | | | | | < 80 |"
        )
        lines.append(
            f"| impetus /health after start (s) | {cell(idle['health_s'], 2)} | | | | | < 1 |"
        )
        if "planned_mb" in imp:
            loaded = imp["rss_mb"]["mean"] - idle["rss_mb"]["mean"]
            planned = imp["planned_mb"]["mean"]
            lines.append(
                f"| impetus model RSS (loaded - idle) vs planned (MB) | {loaded:.0f} / "
                f"{planned:.0f} = {loaded / planned:.2f}x | | | | | within 10% |"
            )
    notes = token_notes(report)
    edits = report.get("edit_variants") or {}
    more = ["", edit_rows.TITLE, "", edit_rows.variants_table(edits)] if edits else []
    more += ["", edit_rows.FILES_TITLE, "", edit_rows.files_table(edits)] if edits else []
    return "\n".join([*lines, *(["", *notes] if notes else []), *more])


def token_notes(report: dict[str, Any]) -> list[str]:
    """Where a server's replies were shorter than asked (it stopped at the end of generation:
    its tokens/s cover fewer tokens) or its tokens were counted from chunks (no usage sent)."""
    want, streams = report["settings"]["decode_tokens"], report["settings"]["streams"]
    notes = []
    for name, res in report["results"].items():
        decode = res.get("decode_tokens", {}).get("mean", want)
        together = res.get("parallel_tokens", {}).get("mean", want * streams)
        if decode < want or together < want * streams:
            notes.append(
                f"- {name}: replies shorter than asked ({decode:.0f} of {want} tokens in the "
                f"decode stream, {together:.0f} of {want * streams} in the {streams} streams)."
            )
        if "first_prompt_tokens" in res and not res["first_prompt_tokens"].get("mean"):
            notes.append(
                f"- {name} sends no token usage when streaming: its completion tokens are "
                "counted one per content chunk, its prompts sized with the others' ratio."
            )
    return notes


def res_mean(res: dict[str, dict[str, dict[str, float]]], key: str) -> float:
    values = [r[key]["mean"] for r in res.values() if r.get(key, {}).get("mean")]
    return statistics.fmean(values) if values else 0.0


if __name__ == "__main__":
    main()
