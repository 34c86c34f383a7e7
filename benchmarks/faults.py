"""A server killed with kill -9 loses nothing (issue 13 §7).

Registers a copy of the built-in model's file under a name of its own (`impetus import`, which
writes a manifest that the server then rewrites with each model's last-used time) and runs
`impetus serve --prompt-cache` on it in a fresh IMPETUS_HOME, over and over:
a few conversations (so the prompt cache has entries to keep), an unload (which writes the
cache to disk), and a SIGKILL at a random moment of that work. After each kill it checks what
the issue asks: every manifest still reads, and no prompt-cache entry on disk is half-written
(each one's header and SHA-256 verify; a write cut short is only ever a temporary file, which
the next start deletes). The pull side (a pull killed with kill -9 resumes to identical bytes)
is tests/test_pull_faults.py. Usage:

    .venv/bin/python benchmarks/faults.py [--cycles 10] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers


def call(port: int, method: str, path: str, body: Any = None, timeout: float = 600) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = None if body is None else json.dumps(body)
    conn.request(method, path, data, {"Content-Type": "application/json"})
    reply = conn.getresponse()
    raw = reply.read()
    return json.loads(raw) if raw.startswith(b"{") else raw


def start(home: Path) -> tuple[peers.Server, int]:
    port = peers.free_port()
    cmd = [sys.executable, "-m", "impetus_cli", "serve", "--port", str(port), "--prompt-cache"]
    server = peers.Server(
        [*cmd, "--ctx", "4096"], home / "serve.log", env={"IMPETUS_HOME": str(home)}
    )
    server.start()
    server.wait_ready(f"http://127.0.0.1:{port}/health")
    return server, port


def work(port: int, model: str, seed: int) -> None:
    """Conversations long enough to be worth caching, then an unload that writes them."""
    rng = random.Random(seed)
    for i in range(3):
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(400))
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": f"Session {seed}-{i}. {words}"},
                {"role": "user", "content": "Summarize."},
            ],
            "max_tokens": 8,
            "temperature": 0,
        }
        call(port, "POST", "/v1/chat/completions", body)
    call(port, "POST", "/impetus/unload", {"model": model})


def check(home: Path) -> dict[str, int]:
    """What survived: manifests that read; cache entries whose header and SHA-256 verify, and
    those that do not (half-written: must be 0); temporary files a cut write left."""
    from impetus_cli.runtime.engines.prompt_tiers import SUFFIX, DiskTier

    manifests = list((home / "manifests").rglob("*.json"))
    unreadable = 0
    for path in manifests:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            unreadable += 1
    root = home / "prompt-cache"
    folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    tmp = sum(len(list(f.glob("*.tmp"))) for f in folders)
    entries = damaged = 0
    for folder in folders:
        files = len(list(folder.glob(f"*{SUFFIX}")))
        tier = DiskTier(root, folder.name, budget=1 << 40)  # its scan drops unreadable files
        damaged += files - len(tier.entries)
        for entry in list(tier.entries):
            entries += 1
            damaged += tier.read(entry) is None
    return {
        "manifests": len(manifests),
        "manifests_unreadable": unreadable,
        "cache_entries": entries,
        "cache_entries_damaged": damaged,
        "temporary_files": tmp,
    }


def cycle(home: Path, model: str, seed: int) -> dict[str, Any]:
    server, port = start(home)
    runner = threading.Thread(target=lambda: _quiet(work, port, model, seed), daemon=True)
    runner.start()
    delay = random.Random(seed).uniform(1.0, 20.0)
    runner.join(delay)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    return {"seed": seed, "killed_after_s": round(delay, 1), **check(home)}


def register(home: Path, name: str) -> None:
    """A copy of the built-in model's file under ``name``, with a manifest of ours."""
    from impetus_cli.runtime.config import load_settings
    from impetus_cli.runtime.store import builtin_model, ensure_builtin_file

    builtin = builtin_model(load_settings())
    if builtin is None:
        raise SystemExit("the built-in model's package is not installed (make setup)")
    path = home / "elsewhere" / "gemma.gguf"  # a copy: the built-in file has its own name
    path.parent.mkdir()
    shutil.copyfile(ensure_builtin_file(builtin), path)
    env = {**os.environ, "IMPETUS_HOME": str(home)}
    argv = [sys.executable, "-m", "impetus_cli", "import", str(path), "--name", name]
    subprocess.run(argv, env=env, check=True, capture_output=True)


def _quiet(fn: Any, *args: Any) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):  # killed under it
        fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.model = "faults-gemma"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        register(home, args.model)
        rows = [cycle(home, args.model, seed) for seed in range(args.cycles)]
        final = check(home)
        server, port = start(home)  # loading the model scans its cache and tidies it
        body = {"model": args.model, "messages": [{"role": "user", "content": "hi"}]}
        call(port, "POST", "/v1/chat/completions", {**body, "max_tokens": 4})
        server.stop()
        after_restart = check(home)
    result = {
        "command": " ".join(["benchmarks/faults.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "cycles": rows,
        "after_the_kills": final,
        "after_a_clean_restart": after_restart,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for row in rows:
        print(row)
    print("after the kills:", final)
    print("after a clean restart:", after_restart)


if __name__ == "__main__":
    main()
