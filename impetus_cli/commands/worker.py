"""`impetus worker`: lend this machine's memory and compute to a model served elsewhere.

It runs llama.cpp's RPC server: through the library llama-cpp-python built (libggml-rpc, on
the Mac's GPU with Metal, else on the CPU), or through an installed `rpc-server` binary when
that library has no RPC backend (or ``--binary`` names one). `impetus serve --rpc HOST:PORT`
on another machine then puts part of a model's layers here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from impetus_cli.commands._ui import console, err_console, human_bytes
from impetus_cli.errors import ConfigError, EngineError, ImpetusError

BINARIES = ("rpc-server", "ggml-rpc-server", "llama-rpc-server")


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)


def worker(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 50052,
    mem: Annotated[
        str | None,
        typer.Option(
            help="Memory to offer, e.g. 24GB (default: impetus's budget for this machine)."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: the physical cores).")
    ] = None,
    allow_remote: Annotated[
        bool,
        typer.Option("--allow-remote", help="Listen on a non-loopback address (trusted LANs)."),
    ] = False,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache", help="Keep large tensors on this disk: a model's next load sends less."
        ),
    ] = False,
    binary: Annotated[
        Path | None, typer.Option(help="Run this llama.cpp rpc-server instead of the library.")
    ] = None,
) -> None:
    """Run llama.cpp's RPC server, so `impetus serve --rpc` elsewhere can split a model here."""
    from impetus_cli.runtime import rpc
    from impetus_cli.runtime.config import parse_size

    out = console()
    if not rpc.is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"Refusing to listen on {host}: {rpc.SECURITY_NOTE}",
            "Add --allow-remote on a trusted network, or keep the default 127.0.0.1 (and reach "
            "it through an SSH tunnel).",
        )
    err_console().print(f"[yellow]Security:[/] {rpc.SECURITY_NOTE}")
    limit = parse_size(mem) if mem else None
    n_threads = threads or _physical_cores()
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    _check_port(host, port)
    program = binary or (None if _library_ready() else _installed_binary())
    if program is not None:
        if limit is not None:
            raise ConfigError(
                "--mem needs the built-in server: llama.cpp's rpc-server has no such option.",
                "Drop --mem, or run `./scripts/setup.sh` to build the library with RPC.",
            )
        out.print(f"llama.cpp RPC server: the binary {program}, on {endpoint}")
        sys.exit(_run_binary(program, host, port, n_threads, cache))
    cache_dir = None
    if cache:
        from impetus_cli.runtime.config import load_settings

        cache_dir = load_settings().home / "rpc-cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
    _run_library(endpoint, limit, n_threads, cache_dir)


def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _library_ready() -> bool:
    from impetus_cli.runtime.engines.llama_rpc import rpc_library

    return rpc_library() is not None


def _installed_binary() -> Path:
    from impetus_cli.runtime.engines.llama_rpc import SETUP_HINT

    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ImpetusError(
        "No llama.cpp RPC server here: llama-cpp-python was built without RPC and no "
        f"{' / '.join(BINARIES)} is on the PATH.",
        SETUP_HINT,
    )


def _own_budget() -> int:
    from impetus_cli.runtime import hardware
    from impetus_cli.runtime.config import load_settings

    return hardware.memory_budget(hardware.detect(), load_settings())


def _check_port(host: str, port: int) -> None:
    """Fail now, with a message, rather than in llama.cpp (which only prints and returns)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"Cannot listen on {host}:{port}: {exc.strerror}.",
                f"Is another worker running? Try --port {port + 1}.",
            ) from None


def _run_library(endpoint: str, limit: int | None, threads: int, cache_dir: Path | None) -> None:
    from impetus_cli.runtime import rpc
    from impetus_cli.runtime.engines import llama_rpc

    devices = llama_rpc.server_devices()
    # What serving machines plan with: without --mem, the budget impetus gives models here (a
    # CPU device reports all of RAM as free; the system needs some of it).
    for device in devices:
        try:
            llama_rpc.cap_memory(device, limit if limit is not None else _own_budget())
        except EngineError:
            if limit is not None:
                raise
            err_console().print("[yellow]Offering the device's own memory report.[/]")
    out = console()
    lib = llama_rpc.rpc_library()
    out.print(f"llama.cpp RPC server: the library llama-cpp-python built ({lib}), on {endpoint}")
    for device in devices:
        free, _total = llama_rpc.device_memory(device.handle)
        out.print(f"  {device.name} ({device.description}): offers {human_bytes(free)}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run = llama_rpc.server(endpoint, devices, threads, cache_dir)
    server = threading.Thread(target=run, name="llama.cpp-rpc-server", daemon=True)
    server.start()
    host, port = rpc.split_endpoint(endpoint)
    wildcard = host in ("0.0.0.0", "::")
    if _wait_ready(f"127.0.0.1:{port}" if wildcard else endpoint, server, stop):
        address = f"{socket.gethostname()}:{port}" if wildcard else endpoint
        out.print(f"ready: on the serving machine, `impetus serve --rpc {address}`")
    while server.is_alive() and not stop.wait(0.5):
        pass
    _exit(0 if stop.is_set() else 1, "stopped" if stop.is_set() else "llama.cpp's server failed")


def _wait_ready(endpoint: str, server: threading.Thread, stop: threading.Event) -> bool:
    """True once the server answers llama.cpp's handshake (it binds after printing)."""
    from impetus_cli.runtime import rpc

    while server.is_alive() and not stop.is_set():
        try:
            rpc.probe(endpoint, timeout=2.0)
            return True
        except rpc.WorkerUnavailable:
            stop.wait(0.1)
    return False


def _exit(code: int, message: str) -> None:
    """llama.cpp's server has no stop call: its thread sits in accept(). Leave the process
    without running C++ static destructors under that thread; the OS closes the socket."""
    console().print(f"worker {message}.")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_binary(program: Path, host: str, port: int, threads: int, cache: bool) -> int:
    command = [str(program), "-H", host, "-p", str(port), "-t", str(threads)]
    child = subprocess.Popen(command + (["--cache"] if cache else []))

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    code = child.wait()
    console().print(f"worker stopped ({program.name} exited with {code}).")
    return code
