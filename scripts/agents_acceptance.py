"""Acceptance test: run the real coding agents headless against a server and say which work.

Each agent (Claude Code, Codex, Codex in Ollama mode, Continue's `cn`, Cline's CLI, with the
providers they offer for a local server) gets a small task in its own temporary directory,
with its own HOME so that no real configuration is read or written, and a timeout. The table
says, per agent: the dialect and endpoint it speaks, whether it finished a turn (it exited 0
and printed a reply), how long it took, and the first error line it printed.

    .venv/bin/python scripts/agents_acceptance.py --url http://127.0.0.1:8080
    .venv/bin/python scripts/agents_acceptance.py --start --model gemma3:270m --markdown

The agents install from npm outside the repository, e.g.
`npm install --prefix ~/agents @anthropic-ai/claude-code @openai/codex @continuedev/cli cline`,
then `--clients-dir ~/agents`. Not part of `make test`: it needs those agents and minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

PROMPT = "Create a file named hello.txt containing the word hello, then say done in one sentence."
DUMMY_KEY = "sk-acceptance-not-a-real-key"
# Inherited variables that would point an agent elsewhere than the server under test.
FOREIGN_ENV = re.compile(r"^(ANTHROPIC_|OPENAI_|OLLAMA_|CODEX_|CLAUDE_|CONTINUE_|CLINE_)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ERROR_LINE = re.compile(
    r"error|failed|refused|not found|unsupported|invalid|cannot|unable|timed out|\b[45]\d\d\b",
    re.IGNORECASE,
)
NOISE_LINE = re.compile(
    r"DeprecationWarning|AI SDK Warning|^\s*at |could not create PATH aliases|"
    r"Model metadata for .* not found",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Setup:
    """Where one agent runs and what it talks to."""

    url: str  # the server's root, without /v1
    model: str
    work: Path  # the agent's private temporary directory
    home: Path
    project: Path
    prompt: str


@dataclass(frozen=True)
class Invocation:
    """The command line and the extra environment of one agent run."""

    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Agent:
    """One client in one configuration: its executable and how to point it at the server."""

    name: str
    binary: str
    dialect: str
    prepare: Callable[[Setup, str], Invocation]


@dataclass(frozen=True)
class Outcome:
    """The row of the table for one agent."""

    agent: str
    dialect: str
    finished: bool
    seconds: float
    error: str


# --- how each agent is pointed at the server ----------------------------------------------


def claude_code(setup: Setup, exe: str) -> Invocation:
    env = {
        "ANTHROPIC_BASE_URL": setup.url,
        "ANTHROPIC_API_KEY": DUMMY_KEY,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    # File tools only: a tiny model's shell commands are not worth running.
    argv = [exe, "-p", setup.prompt, "--model", setup.model, "--allowedTools", "Write,Read,Edit"]
    return Invocation(argv, env)


def _codex_home(setup: Setup, provider: str) -> Path:
    home = setup.work / "codex-home"
    home.mkdir()
    lines = ["check_for_update_on_startup = false", provider, "[analytics]", "enabled = false"]
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


def codex(setup: Setup, exe: str) -> Invocation:
    provider = (
        f'model = "{setup.model}"\nmodel_provider = "impetus"\n'
        f'[model_providers.impetus]\nname = "Impetus"\nbase_url = "{setup.url}/v1"\n'
        'env_key = "IMPETUS_ACCEPTANCE_KEY"\nwire_api = "responses"\n'
    )
    env = {"CODEX_HOME": str(_codex_home(setup, provider)), "IMPETUS_ACCEPTANCE_KEY": DUMMY_KEY}
    argv = [exe, "exec", "--skip-git-repo-check", "--sandbox", "workspace-write", setup.prompt]
    return Invocation(argv, env)


def codex_oss(setup: Setup, exe: str) -> Invocation:
    env = {"CODEX_HOME": str(_codex_home(setup, "")), "CODEX_OSS_BASE_URL": f"{setup.url}/v1"}
    argv = [exe, "exec", "--skip-git-repo-check", "--sandbox", "workspace-write", "--oss"]
    argv += ["--local-provider", "ollama", "-m", setup.model, setup.prompt]
    return Invocation(argv, env)


def _continue(provider: str, api_base: str) -> Callable[[Setup, str], Invocation]:
    def prepare(setup: Setup, exe: str) -> Invocation:
        config = setup.work / "config.yaml"
        model = {
            "name": "Impetus",
            "provider": provider,
            "model": setup.model,
            "apiBase": setup.url + api_base,
            "apiKey": DUMMY_KEY,
            "roles": ["chat", "edit", "apply"],
        }
        document = {"name": "acceptance", "version": "0.0.1", "schema": "v1", "models": [model]}
        config.write_text(json.dumps(document, indent=2))  # JSON is YAML
        env = {"CONTINUE_CLI_ENABLE_TELEMETRY": "0", "CONTINUE_METRICS_ENABLED": "0"}
        return Invocation([exe, "--config", str(config), "-p", setup.prompt], env)

    return prepare


def _cline(provider: str, api_base: str) -> Callable[[Setup, str], Invocation]:
    def prepare(setup: Setup, exe: str) -> Invocation:
        data = setup.work / "cline-data"
        (data / "settings").mkdir(parents=True)
        # `cline auth --baseurl` refuses the ollama provider; its settings file takes a baseUrl.
        settings = {
            "provider": provider,
            "apiKey": DUMMY_KEY,
            "model": setup.model,
            "baseUrl": setup.url + api_base,
        }
        document = {
            "version": 1,
            "lastUsedProvider": provider,
            "modes": {},
            "providers": {
                provider: {
                    "settings": settings,
                    "tokenSource": "manual",
                    "updatedAt": "2026-01-01T00:00:00.000Z",
                }
            },
        }
        (data / "settings" / "providers.json").write_text(json.dumps(document, indent=2))
        argv = [exe, "--data-dir", str(data), "-P", provider, "-m", setup.model, setup.prompt]
        return Invocation(argv, {})

    return prepare


AGENTS = (
    Agent("claude-code", "claude", "Anthropic Messages: /v1/messages", claude_code),
    Agent("codex", "codex", "OpenAI Responses: /v1/responses", codex),
    Agent("codex-oss", "codex", "Ollama /api/version, /api/tags + /v1/responses", codex_oss),
    Agent("continue-openai", "cn", "OpenAI chat: /v1/chat/completions", _continue("openai", "/v1")),
    Agent("continue-ollama", "cn", "OpenAI chat: /v1/chat/completions", _continue("ollama", "")),
    Agent(
        "cline-openai",
        "cline",
        "OpenAI chat: /v1/chat/completions",
        _cline("openai-compatible", "/v1"),
    ),
    Agent("cline-ollama", "cline", "Ollama: /api/tags, /api/chat", _cline("ollama", "")),
)


# --- running one agent ----------------------------------------------------------------------


def find_binary(name: str, clients_dir: Path | None) -> str | None:
    """The agent's executable: under `clients_dir`/node_modules/.bin first, then on PATH."""
    if clients_dir is not None:
        candidate = clients_dir / "node_modules" / ".bin" / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def _environment(setup: Setup, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not FOREIGN_ENV.match(k)}
    env.update({"HOME": str(setup.home), "NO_COLOR": "1", "TERM": "dumb"})
    env.update(extra)
    return env


def _run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int | None, str, str]:
    """Run in a new process group, so a timeout ends the agent and every helper it started."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return None, out, err


def first_error(*texts: str) -> str:
    """The first line that reads like an error, without colours, noise or stack frames."""
    for text in texts:
        for line in ANSI.sub("", text).splitlines():
            line = line.strip()
            if line and ERROR_LINE.search(line) and not NOISE_LINE.search(line):
                return line[:160]
    return ""


def run_agent(agent: Agent, url: str, model: str, timeout: float, clients: Path | None) -> Outcome:
    """Run one agent on the small task and judge whether it finished a turn."""
    exe = find_binary(agent.binary, clients)
    if exe is None:
        return Outcome(agent.name, agent.dialect, False, 0.0, f"`{agent.binary}` is not installed")
    with tempfile.TemporaryDirectory(prefix=f"acceptance-{agent.name}-") as tmp:
        work = Path(tmp)
        setup = Setup(url.rstrip("/"), model, work, work / "home", work / "project", PROMPT)
        setup.home.mkdir()
        setup.project.mkdir()
        (setup.project / "README.md").write_text("A scratch project for an agent acceptance run.\n")
        invocation = agent.prepare(setup, exe)
        started = time.monotonic()
        code, out, err = _run(
            invocation.argv, setup.project, _environment(setup, invocation.env), timeout
        )
        seconds = time.monotonic() - started
    reply = ANSI.sub("", out).strip()
    finished = code == 0 and bool(reply)
    error = "" if finished else first_error(err, out)
    if code is None:
        error = f"timed out after {timeout:.0f} s" + (f": {error}" if error else "")
    elif not finished and not error:
        last = [line for line in ANSI.sub("", err + out).splitlines() if line.strip()]
        error = last[-1].strip()[:160] if last else f"exit code {code}, no reply"
    return Outcome(agent.name, agent.dialect, finished, seconds, error)


# --- the server, when asked to start one ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Poll /health until the server answers; fail early if it exits."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"impetus serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"impetus serve did not answer {url}/health in time")


def check_reachable(url: str) -> None:
    """Stop at once when nothing answers at `url` (any HTTP status will do)."""
    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10).close()
    except urllib.error.HTTPError:
        return
    except OSError as error:
        raise SystemExit(f"nothing answers at {url}: {error}") from error


def start_impetus(model: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`impetus serve MODEL` on a free loopback port, its output in `log`."""
    exe = Path(sys.executable).with_name("impetus")
    command = str(exe) if exe.exists() else shutil.which("impetus")
    if command is None:
        raise SystemExit("`impetus` is not installed in this environment")
    port = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [command, "serve", "--port", str(port), model], stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, time.monotonic() + 300)
    return proc, url


# --- the report -----------------------------------------------------------------------------


def render(outcomes: list[Outcome], markdown: bool) -> str:
    """The table: markdown for the README, or aligned plain text for a terminal."""
    header = ("agent", "dialect / endpoint", "finished a turn", "seconds", "first error line")
    rows = [
        (o.agent, o.dialect, "yes" if o.finished else "no", f"{o.seconds:.0f}", o.error or "-")
        for o in outcomes
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [cell.replace("|", "\\|") for cell in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def describe_exit(code: int) -> str:
    """`exit code 1`, or the signal that killed the process (`SIGILL`)."""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def run_all(
    agents: list[Agent], url: str, args: argparse.Namespace, server: subprocess.Popen[bytes] | None
) -> list[Outcome]:
    """Run the agents one after another; a server we started that dies is named in the rows."""
    outcomes = []
    for agent in agents:
        if server is not None and server.poll() is not None:
            gone = f"not run: impetus serve had stopped ({describe_exit(server.returncode)})"
            outcomes.append(Outcome(agent.name, agent.dialect, False, 0.0, gone))
            continue
        print(f"running {agent.name}...", file=sys.stderr, flush=True)
        outcome = run_agent(agent, url, args.model, args.timeout, args.clients_dir)
        if server is not None and server.poll() is not None:
            died = f"impetus serve stopped ({describe_exit(server.returncode)}) during this run"
            outcome = replace(outcome, error=f"{died}; {outcome.error}")
        outcomes.append(outcome)
    return outcomes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="root URL of a running server, e.g. http://127.0.0.1:8080")
    target.add_argument("--start", action="store_true", help="start `impetus serve` on a free port")
    parser.add_argument("--model", default="gemma3:270m", help="model the agents ask for")
    parser.add_argument(
        "--agents", help="comma-separated subset of: " + ", ".join(a.name for a in AGENTS)
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per agent")
    parser.add_argument("--clients-dir", type=Path, help="npm prefix holding the agents")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.agents.split(",")) if args.agents else {a.name for a in AGENTS}
    unknown = wanted - {a.name for a in AGENTS}
    if unknown:
        raise SystemExit(f"unknown agents: {', '.join(sorted(unknown))}")
    server, url = None, args.url
    # One log per run: two runs at once must not write into each other's.
    log = Path(tempfile.mkstemp(prefix="agents-acceptance-serve-", suffix=".log")[1])
    if args.start:
        server, url = start_impetus(args.model, log)
        print(f"impetus serve at {url} (log: {log})", file=sys.stderr)
    else:
        check_reachable(url)
    agents = [a for a in AGENTS if a.name in wanted]
    try:
        outcomes = run_all(agents, url, args, server)
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
    print(render(outcomes, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
