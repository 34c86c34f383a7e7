"""serve_vs_peers.py's speculative-decoding rows (issue 17 §2): how fast a reply that repeats its
input decodes, and what speculation costs a reply that does not, on impetus and on llama-server
run with each of its own speculative options as a user would set them.

Requests streamed from /v1/completions (a raw prompt: the suite's model is a base model, which
completes text rather than following chat turns):

- edit, six of them: a ~300-line Python file in a fenced block, then, in the same completion
  style, the heading of the file "after" one asked-for change and an open fence: the model
  writes the file out again, as an edit or "apply" reply does. The files are the standard
  library's modules of 300-350 lines (EDIT_FILES). Temperature 0 (agents edit at 0), as many
  tokens as queue.py has. Gemma 3 270M keeps its place in a copy for a while, then drifts and
  repeats parts of it (its sliding-window layers see only the last 512 tokens), or writes code
  of its own: the table gives how much of the replies is the file's text. Where it drifts and
  how it loops depends on llama.cpp's rounding, which differs between the servers and their
  batch shapes, and one reply's loop can move a server's speed by 25%; six files average that
  out. The edit speed is the six replies' tokens over their decode time;
- prose: the opening of an essay to continue, and novel code: the start of a new module to
  continue (nothing to copy in either). Temperature 0.8 (at 0 this base model soon repeats
  itself, which would make them a copy too), SEEDS seeds per repetition. A batch's rounding
  moves a sampled probability, so a server with and without speculation soon samples
  different texts from one seed, and one 256-token reply per side cannot show a 3%
  difference (this VM's speed alone drifts more within minutes). So these requests run
  apart from the edit rows, on each server's variant without speculation and its
  speculative one side by side: both processes started at once (idle but for their own
  requests), every request sent to one and then the other, the order alternating seed by
  seed; the speed is all the replies' tokens over their decode time.

impetus runs with ``--no-loop-guard``: its runaway guard would end these replies where this
base model repeats itself, and each variant must generate the same number of tokens (llama-server
has no such guard). Decode speed is the client's: tokens from the first streamed token to the last, over that time.
Every server configuration (a variant) is its own process; the order of the variants rotates
each repetition. impetus runs with ``--speculative off`` and ``ngram``; llama-server without
speculation and with the n-gram types its documentation offers (docs/speculative.md; there is
no draft model of Gemma 3 270M's vocabulary smaller than itself): ngram-mod and ngram-map-k,
its two best in every run so far; ``--all-types`` adds ngram-simple and ngram-cache (on the
queue.py reply they ran at llama-server's speed without speculation). The load average is
taken around every variant, because the machine is shared.

    .venv/bin/python benchmarks/edit_rows.py --reps 2          # alone: prints its table
    .venv/bin/python benchmarks/edit_rows.py --only-sampled ngram-map-k  # prose and code only
    .venv/bin/python benchmarks/serve_vs_peers.py --edit ...   # as rows of the suite
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers

# The variants: (server, name, extra command-line arguments).
VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("impetus", "off", ("--speculative", "off", "--no-loop-guard")),
    ("impetus", "ngram", ("--speculative", "ngram", "--no-loop-guard")),
    ("llama-server", "none", ()),
    ("llama-server", "ngram-simple", ("--spec-type", "ngram-simple", "--spec-draft-n-max", "64")),
    ("llama-server", "ngram-map-k", ("--spec-type", "ngram-map-k", "--spec-draft-n-max", "64")),
    ("llama-server", "ngram-mod", ("--spec-type", "ngram-mod")),
    ("llama-server", "ngram-cache", ("--spec-type", "ngram-cache", "--spec-draft-n-max", "16")),
)
SLOWER_TYPES = ("ngram-simple", "ngram-cache")  # measured only with --all-types
# The edit requests' files: the standard library's modules of 300-350 lines.
EDIT_FILES = ("queue", "shlex", "copy", "filecmp", "tabnanny", "string")
PLAIN = {"impetus": "off", "llama-server": "none"}  # each server's variant without speculation
CHANGE = "a typo fixed in a comment"
PROSE = (
    "The history of the lighthouse is a history of coastlines, trade and the people who kept "
    "the lamps burning through the night. In the early nineteenth century,"
)
CODE = (
    '"""A small command-line tool that watches a directory and uploads new photos to a '
    'server."""\n\nimport argparse\nimport hashlib\nimport pathlib\n\n\n'
)
LABELS = {
    "edit_plain_tps": "edit-shaped replies (6 files of 300-350 lines, {edit_tokens} tokens "
    "each), no speculation: decode (tok/s)",
    "edit_spec_tps": "edit-shaped replies with speculation (impetus ngram; llama-server: its "
    "best type, {best}): decode (tok/s)",
    "edit_gain_x": "edit-shaped replies: speculation / none (x)",
    "prose_gain_x": "prose, {seeds} x 256 tokens sampled: speculation / none (x)",
    "code_gain_x": "novel code, {seeds} x 256 tokens sampled: speculation / none (x)",
    "edit_load": "(machine) 1-minute load average while the edit rows ran",
}
TARGETS = {
    "edit_plain_tps": ("-", True),
    "edit_spec_tps": ("> 1.0x", True),
    "edit_gain_x": (">= 1.8 (impetus)", True),
    "prose_gain_x": (">= 0.97 (impetus)", True),
    "code_gain_x": (">= 0.97 (impetus)", True),
    "edit_load": ("-", False),
}


EDIT_TOKENS = 2800  # about the file's length in Gemma's tokens
SAMPLED = {"temperature": 0.8, "max_tokens": 256}
SEEDS = 6  # the prose and code requests' seeds per repetition


def edited_file(name: str = "queue") -> str:
    import importlib

    return inspect.getsource(importlib.import_module(name))


TITLE = "Speculative decoding, every variant (edit_rows.py; load average per variant):"


def label_values(res: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """What the labels name: the edit reply's tokens, llama-server's best speculative type."""
    tokens = [r["edit_tokens"]["mean"] for r in res.values() if "edit_tokens" in r]
    best = [k.split(":", 1)[1] for k in res.get("llama-server", {}) if k.startswith("best:")]
    seeds = [r["sampled_seeds"]["mean"] for r in res.values() if "sampled_seeds" in r]
    return {
        "edit_tokens": round(statistics.fmean(tokens)) if tokens else 0,
        "best": best[0] if best else "-",
        "seeds": f"{seeds[0]:.0f} seeds" if seeds else "1 seed",  # earlier runs: one
    }


def edit_prompt(name: str = "queue") -> str:
    code = edited_file(name)
    return (
        f"# File: {name}.py\n```python\n{code}```\n\n"
        f"# File: {name}.py, after one change ({CHANGE}); the whole file:\n```python\n"
    )


def workloads() -> dict[str, dict[str, Any]]:
    """The edit requests' bodies (/v1/completions), without the model: ``edit:<file>`` for
    each edited file."""
    return {
        f"edit:{name}": {"prompt": edit_prompt(name), "max_tokens": EDIT_TOKENS, "temperature": 0}
        for name in EDIT_FILES
    }


def sampled_workloads(rep: int) -> list[tuple[str, int, dict[str, Any]]]:
    """The prose and code requests of repetition ``rep``: (kind, seed, body), seed by seed;
    each repetition has its own seeds."""
    return [
        (kind, seed, {"prompt": prompt, **SAMPLED, "seed": seed})
        for seed in range(rep * SEEDS + 1, (rep + 1) * SEEDS + 1)
        for kind, prompt in (("prose", PROSE), ("code", CODE))
    ]


def file_share(reply: str, name: str = "queue") -> float:
    """How much of the reply is the file's text: matching lines over the reply's lines."""
    import difflib

    lines = reply.splitlines()
    match = difflib.SequenceMatcher(None, edited_file(name).splitlines(), lines, autojunk=False)
    return sum(b.size for b in match.get_matching_blocks()) / max(1, len(lines))


def stream(url: str, body: dict[str, Any], name: str = "") -> dict[str, float]:
    """One streamed completion: TTFT, decode tok/s (first token to last), tokens, drafts,
    decode seconds, and the share of the reply that is file ``name``'s text (0 without one)."""
    data = json.dumps({**body, "model": peers.MODEL, "stream": True}).encode()
    request = urllib.request.Request(
        f"{url}/v1/completions", data, {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    first = last = 0.0
    pieces, text = 0, []
    timings: dict[str, Any] = {}
    with urllib.request.urlopen(request, timeout=1800) as reply:
        for raw in reply:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            timings = event.get("timings") or timings
            if any(c.get("text") for c in event.get("choices", [])):
                text += [c.get("text") or "" for c in event["choices"]]
                last = time.perf_counter()
                first = first or last
                pieces += 1
    tokens = float(timings.get("predicted_n") or pieces)
    return {
        "ttft_s": first - start,
        "tps": (tokens - 1) / (last - first) if last > first else 0.0,
        "tokens": tokens,
        "decode_s": last - first,
        "drafted": float(timings.get("draft_n", 0)),
        "accepted": float(timings.get("draft_n_accepted", 0)),
        "file": file_share("".join(text), name) if name else 0.0,
    }


def command(server: str, extra: tuple[str, ...], args: argparse.Namespace, binary: Path | None):
    """The suite's command line for the server, with the variant's options."""
    argv = peers.command(server, args, peers.gemma_path(), binary)
    return [*argv, *extra]


@contextlib.contextmanager
def running(
    server: str, extra: tuple[str, ...], args: argparse.Namespace, binary: Path | None, log: Path
) -> Iterator[str]:
    """The variant's server started, ready and warmed up: its URL; stopped on leaving."""
    port = peers.free_port()
    argv = command(server, extra, args, binary)
    argv = [str(port) if a == "0" and argv[i - 1] == "--port" else a for i, a in enumerate(argv)]
    proc = peers.Server(argv, log)
    proc.start()
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(url + "/v1/models")
        stream(url, {"prompt": "Warm up.", "max_tokens": 4})
        yield url
    finally:
        proc.stop()


def measure_variant(
    server: str, extra: tuple[str, ...], args: argparse.Namespace, binary: Path | None, log: Path
) -> dict[str, float]:
    """The edit requests on the variant's own server."""
    load = os.getloadavg()[0]
    result: dict[str, float] = {}
    with running(server, extra, args, binary, log) as url:
        for name, body in workloads().items():
            for key, value in stream(url, body, name.partition(":")[2]).items():
                result[f"{name}_{key}"] = value
    result.update(edit_totals(result))
    result["load"] = (load + os.getloadavg()[0]) / 2
    return result


def measure_sampled(
    server: str,
    variants: list[tuple[str, tuple[str, ...]]],
    args: argparse.Namespace,
    binary: Path | None,
    logs: Path,
    rep: int,
) -> dict[str, dict[str, float]]:
    """The prose and code requests of repetition ``rep`` on the server's ``variants`` (name,
    options) side by side, the order alternating seed by seed. Per variant: ``prose_tps``
    and ``code_tps`` (tokens over decode time), their tokens per reply and drafts."""
    names = [name for name, _ in variants]
    sums = {(n, kind): [0.0, 0.0, 0.0, 0.0, 0.0] for n in names for kind in ("prose", "code")}
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                running(server, extra, args, binary, logs / f"sampled-{server}-{name}-{rep}.log")
            )
            for name, extra in variants
        }
        for kind, seed, body in sampled_workloads(rep):
            for name in names if seed % 2 else names[::-1]:
                reply = stream(urls[name], body)
                total = sums[(name, kind)]
                total[0] += reply["tokens"] - 1
                total[1] += reply["decode_s"]
                total[2] += reply["drafted"]
                total[3] += reply["accepted"]
                total[4] += 1
    out: dict[str, dict[str, float]] = {name: {} for name in names}
    for (name, kind), (tokens, seconds, drafted, accepted, replies) in sums.items():
        out[name] |= {
            f"{kind}_tps": tokens / seconds if seconds else 0.0,
            f"{kind}_tokens": tokens / replies + 1,
            f"{kind}_drafted": drafted,
            f"{kind}_accepted": accepted,
            "sampled_seeds": replies,
        }
    return out


def edit_totals(result: dict[str, float]) -> dict[str, float]:
    """The edit rows over every file: tokens over decode time (each reply weighs its time),
    tokens per reply, drafts summed, and the mean share of the files' text in the replies."""
    per_file = [
        {k: result[f"edit:{n}_{k}"] for k in ("tokens", "decode_s", "drafted", "accepted", "file")}
        for n in EDIT_FILES
    ]
    tokens = sum(f["tokens"] - 1 for f in per_file)
    seconds = sum(f["decode_s"] for f in per_file)
    return {
        "edit_tps": tokens / seconds if seconds else 0.0,
        "edit_tokens": statistics.fmean(f["tokens"] for f in per_file),
        "edit_drafted": sum(f["drafted"] for f in per_file),
        "edit_accepted": sum(f["accepted"] for f in per_file),
        "edit_file": statistics.fmean(f["file"] for f in per_file),
    }


def measure(
    args: argparse.Namespace, binary: Path | None, logs: Path, servers: list[str]
) -> dict[str, list[dict[str, float]]]:
    """Every variant of the given servers, ``args.reps`` times, the order rotating."""
    every = getattr(args, "all_types", False)
    variants = [v for v in VARIANTS if v[0] in servers and (every or v[1] not in SLOWER_TYPES)]
    samples: dict[str, list[dict[str, float]]] = {f"{s}:{n}": [] for s, n, _ in variants}
    for rep in range(args.reps):
        shift = rep % len(variants)
        for server, name, extra in variants[shift:] + variants[:shift]:
            label = f"{server}:{name}"
            print(f"rep {rep + 1}: edit rows, {label}", flush=True)
            log = logs / f"edit-{server}-{name}-{rep}.log"
            result = measure_variant(server, extra, args, binary, log)
            samples[label].append(result)
            keys = ("edit_tps", "edit_tokens", "edit_drafted", "edit_accepted", "load")
            print("   " + ", ".join(f"{k} {result[k]:.3g}" for k in keys), flush=True)
    for rep in range(args.reps):
        for server, plain in PLAIN.items():
            runs = {n: samples[f"{s}:{n}"] for s, n, _ in variants if s == server}
            if plain not in runs or len(runs) < 2:
                continue
            pair = [plain, best_type(runs, plain)]
            print(f"rep {rep + 1}: prose and code, {server}: {' and '.join(pair)}", flush=True)
            options = [(n, extra) for s, n, extra in variants if s == server and n in pair]
            for name, result in measure_sampled(server, options, args, binary, logs, rep).items():
                samples[f"{server}:{name}"][rep] |= result
                shown = ("prose_tps", "code_tps", "prose_tokens", "code_tokens")
                print(f"   {name}: " + ", ".join(f"{k} {result[k]:.3g}" for k in shown), flush=True)
    return samples


def best_type(runs: dict[str, list[dict[str, float]]], plain: str) -> str:
    """The server's speculative variant with the best mean edit speed."""
    return max((n for n in runs if n != plain), key=lambda n: _mean(runs[n], "edit_tps"))


def rows(samples: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    """The suite's per-server rows from the variants, one dict per repetition: without
    speculation, impetus's ngram, and llama-server's best type (by its mean edit speed)."""
    out: dict[str, list[dict[str, float]]] = {}
    for server, plain in PLAIN.items():
        runs = {k.split(":", 1)[1]: v for k, v in samples.items() if k.startswith(server + ":")}
        if plain not in runs or len(runs) < 2:
            continue
        best = best_type(runs, plain)
        out[server] = []
        for off, on in zip(runs[plain], runs[best], strict=True):
            out[server].append(
                {
                    "edit_plain_tps": off["edit_tps"],
                    "edit_spec_tps": on["edit_tps"],
                    "edit_gain_x": on["edit_tps"] / off["edit_tps"],
                    "prose_gain_x": on["prose_tps"] / off["prose_tps"],
                    "code_gain_x": on["code_tps"] / off["code_tps"],
                    "edit_load": (off["load"] + on["load"]) / 2,
                    "edit_tokens": off["edit_tokens"],
                    "sampled_seeds": off.get("sampled_seeds", 1.0),
                    f"best:{best}": 1.0,
                }
            )
    return out


def variants_table(samples: dict[str, list[dict[str, float]]]) -> str:
    """Every variant: decode speeds of the edit (all files), prose and code requests, the
    drafts taken, the load."""
    lines = [
        "| server: speculative setting | edit (tok/s) | edit tokens, file's lines in them "
        "| edit drafts accepted | prose (tok/s) | novel code (tok/s) | load average (edit) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in samples.items():
        if not runs:
            continue
        drafted, accepted = _mean(runs, "edit_drafted"), _mean(runs, "edit_accepted")
        rate = f"{accepted / drafted:.0%} of {drafted:.0f}" if drafted else "-"
        loads = [r["load"] for r in runs]
        lines.append(
            f"| {label} | {_cell(runs, 'edit_tps')} | {_mean(runs, 'edit_tokens'):.0f}, "
            f"{_mean(runs, 'edit_file'):.0%} | {rate} "
            f"| {_sampled(runs, 'prose')} | {_sampled(runs, 'code')} "
            f"| {min(loads):.1f}-{max(loads):.1f} |"
        )
    return "\n".join(lines)


FILES_TITLE = "The edit replies file by file (decode tok/s; drafts accepted / drafted):"


def files_table(samples: dict[str, list[dict[str, float]]]) -> str:
    """Every variant's edit speed per file, with its drafts, the repetitions' mean."""
    lines = ["| server: speculative setting | " + " | ".join(f"{n}.py" for n in EDIT_FILES) + " |"]
    lines.append("|---" * (len(EDIT_FILES) + 1) + "|")
    for label, runs in samples.items():
        if not runs:
            continue
        cells = []
        for name in EDIT_FILES:
            drafted = _mean(runs, f"edit:{name}_drafted")
            accepted = _mean(runs, f"edit:{name}_accepted")
            drafts = f" ({accepted:.0f}/{drafted:.0f})" if drafted else ""
            cells.append(f"{_mean(runs, f'edit:{name}_tps'):.1f}{drafts}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sampled(runs: list[dict[str, float]], kind: str) -> str:
    """The prose or code cell: tok/s, with the drafts accepted / drafted per repetition."""
    have = [r for r in runs if f"{kind}_drafted" in r]
    drafted = _mean(have, f"{kind}_drafted")
    drafts = f" ({_mean(have, f'{kind}_accepted'):.0f}/{drafted:.0f})" if drafted else ""
    return _cell(runs, f"{kind}_tps") + drafts


def _mean(runs: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(r[key] for r in runs) if runs else 0.0


def _cell(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    if not values:
        return "-"  # prose and code run on the plain and the best speculative variant only
    sd = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.1f}{sd}"


def sampled_only(
    args: argparse.Namespace, binary: Path | None, logs: Path, servers: list[str]
) -> None:
    """The prose and code requests alone: each server without speculation and with
    (impetus's ngram, llama-server's ``--only-sampled`` type), ``args.reps`` times."""
    spec = {"impetus": "ngram", "llama-server": args.only_sampled}
    print("| server | repetition | text | plain (tok/s) | speculation (tok/s) | drafts | ratio |")
    print("|---|---|---|---|---|---|---|")
    for rep in range(args.reps):
        for server in servers:
            pair = (PLAIN[server], spec[server])
            options = [(n, extra) for s, n, extra in VARIANTS if s == server and n in pair]
            res = measure_sampled(server, options, args, binary, logs, rep)
            off, on = res[pair[0]], res[pair[1]]
            for kind in ("prose", "code"):
                a, b = off[f"{kind}_tps"], on[f"{kind}_tps"]
                drafts = f"{on[f'{kind}_accepted']:.0f}/{on[f'{kind}_drafted']:.0f}"
                print(f"| {server} | {rep + 1} | {kind} | {a:.1f} | {b:.1f} | {drafts} "
                      f"| {b / a:.3f}x |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--parallel", type=int)
    parser.add_argument("--skip", action="append", default=[], choices=("impetus", "llama-server"))
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--all-types", action="store_true", help="every llama-server n-gram type")
    parser.add_argument(
        "--only-sampled",
        metavar="TYPE",
        help="only the prose and code requests, llama-server's speculation with this type",
    )
    args = parser.parse_args()
    servers = [s for s in ("impetus", "llama-server") if s not in args.skip]
    binary = args.llama_server
    if "llama-server" in servers and binary is None:
        from benchmarks.build_llama_cpp import build

        binary = build()["llama-server"]
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"impetus-edit-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    if args.only_sampled:
        sampled_only(args, binary, logs, servers)
        return
    samples = measure(args, binary, logs, servers)
    if args.out:
        args.out.write_text(json.dumps(samples, indent=2))
    print(f"\nlogs: {logs}\n\n{variants_table(samples)}\n\n{files_table(samples)}")


if __name__ == "__main__":
    main()
