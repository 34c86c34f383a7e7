"""`impetus serve`: the OpenAI-compatible server, loading models on demand."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Annotated

import typer

from impetus_cli.commands._ui import console
from impetus_cli.errors import ConfigError

if TYPE_CHECKING:
    from impetus_cli.runtime.config import Settings


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    models: Annotated[
        list[str] | None, typer.Argument(help="Models to load at start (others load on demand).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    ollama_port: Annotated[
        int | None,
        typer.Option(help="Also listen here, where Ollama clients look (e.g. 11434)."),
    ] = None,
    ctx: Annotated[
        int | None, typer.Option(help="Context tokens per request (default: planned).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: performance cores).")
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="Cached conversations per model (default: from memory).")
    ] = None,
    memory_budget: Annotated[str | None, typer.Option(help="Memory for models, e.g. 12GB.")] = None,
    keep_alive: Annotated[
        float | None, typer.Option(help="Seconds an idle model stays loaded (-1 = forever).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Require this key (also IMPETUS_API_KEY).")
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow browser requests from this origin.")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Answer this Host name too (besides localhost / 127.0.0.1)."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="A reply's limit when the request sets none (default 8192)."),
    ] = None,
    loop_guard: Annotated[
        bool | None,
        typer.Option(
            "--loop-guard/--no-loop-guard", help="Stop replies that repeat themselves (on)."
        ),
    ] = None,
    prompt_cache: Annotated[
        bool | None,
        typer.Option(
            "--prompt-cache/--no-prompt-cache",
            help="Keep conversations on disk too (~/.impetus/prompt-cache), so they survive "
            "restarts and model swaps (on).",
        ),
    ] = None,
    cache_ram: Annotated[
        str | None,
        typer.Option(
            help="Host RAM for conversations that leave the KV cache, e.g. 4GB (default: an "
            "eighth of the memory budget, at most 8 GB; 0: none).",
        ),
    ] = None,
    cache_disk: Annotated[
        str | None,
        typer.Option(help="Disk for the prompt cache across models, e.g. 20GB (the default)."),
    ] = None,
    speculative: Annotated[
        str | None,
        typer.Option(
            help="Speculative decoding: off, ngram (guess from the prompt and reply: edits "
            "repeat their input), draft (each model's small sibling, when pulled) or a MODEL "
            "that drafts (default ngram).",
        ),
    ] = None,
    draft: Annotated[
        str | None,
        typer.Option(help="A small model of the same vocabulary that drafts (GGUF)."),
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(
            help="Split GGUF models' layers across these `impetus worker`s: host:port[,host:port].",
        ),
    ] = None,
    remote: Annotated[
        list[str] | None,
        typer.Option(
            help="Serve an OpenAI-compatible server's models as NAME/MODEL: [NAME=]URL "
            "(repeatable; key and filters in config.toml's remote tables).",
        ),
    ] = None,
) -> None:
    """Serve local models to Cline, Continue and any OpenAI client."""
    from impetus_cli.runtime.config import load_settings

    settings = load_settings(
        {
            "host": host,
            "port": port,
            "ollama_port": ollama_port,
            "ctx": ctx,
            "threads": threads,
            "parallel": parallel,
            "memory_budget": memory_budget,
            "keep_alive": keep_alive,
            "api_key": api_key,
            "cors_origins": cors_origin or None,
            "allowed_hosts": allowed_host or None,
            "max_tokens": max_tokens,
            "loop_guard": loop_guard,
            "prompt_cache": prompt_cache,
            "cache_ram": cache_ram,
            "cache_disk": cache_disk,
            "speculative": speculative,
            "draft": draft,
            "rpc": rpc,
            "remote": remote or None,
        }
    )
    if not _loopback(settings.host) and not settings.api_key:
        raise ConfigError(
            f"Refusing to serve on {settings.host} without an API key: anyone on the network could use it.",
            "Add --api-key SECRET (or set IMPETUS_API_KEY), or bind 127.0.0.1.",
        )
    run_server(settings, models or [])


def run_server(settings: Settings, preload: list[str]) -> None:
    import asyncio
    import logging

    from aiohttp import web

    from impetus_cli.runtime.manager import ModelManager
    from impetus_cli.server.app import make_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    manager = ModelManager(settings, allow_paths=False)
    for name in preload:
        plan = manager.load(name)
        console().print(
            f"loaded [cyan]{name}[/]: context {plan.n_ctx}, {plan.total_bytes / 1e9:.1f} GB"
        )
    _banner(settings, manager, preload)
    app = make_app(manager, settings)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            sock=_ollama_socket(settings),  # the same app on a second site
            print=None,
            shutdown_timeout=10.0,
            handle_signals=True,
            access_log=None,
        )
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror}.",
            f"Is another server running? Try --port {settings.port + 1}.",
        ) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    console().print("stopped; models unloaded.")


def _ollama_socket(settings: Settings) -> socket.socket | None:
    """The listening socket of ``--ollama-port``, bound now so a port in use is said at once."""
    if settings.ollama_port is None:
        return None
    try:
        return socket.create_server((settings.host, settings.ollama_port))
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {settings.host}:{settings.ollama_port}: {exc.strerror}.",
            "Is Ollama running there? Stop it, or pick another --ollama-port.",
        ) from None


def _banner(settings: Settings, manager: object, preload: list[str]) -> None:
    """Where the server is and how to point the clients at it. The API key is never printed:
    the banner ends up in logs."""
    model = preload[0] if preload else settings.default_model
    try:
        n_ctx = manager.plan(model).n_ctx  # type: ignore[attr-defined]
    except Exception:  # the banner must not stop the server; requests will report the problem
        n_ctx = None
    out = console()
    out.print(f"[bold]Impetus[/] serving on [cyan]{settings.base_url}[/]  (Ctrl-C stops)")
    key = "the key you set (--api-key / IMPETUS_API_KEY)" if settings.api_key else "any value"
    guard = "on" if settings.loop_guard else "off (--no-loop-guard)"
    out.print(
        f"  Replies without max_tokens stop at {settings.max_tokens} tokens (--max-tokens); "
        f"loop guard {guard}."
    )
    out.print(
        f"  Cline: API Provider [b]OpenAI Compatible[/], Base URL {settings.base_url}, API Key {key}, "
        f"Model ID {model}, Context Window {n_ctx or '-'}"
    )
    out.print(
        f"  Continue: provider: openai, apiBase: {settings.base_url}, model: {model}"
        + (f", contextLength: {n_ctx}" if n_ctx else "")
    )
    for r in settings.remote:  # the URL only: its key stays in the environment
        out.print(f"  Remote [cyan]{r.name}[/]: {r.url} (its models as {r.name}/MODEL)")
    if settings.ollama_port is not None:
        root = settings.base_url.removesuffix("/v1").rsplit(":", 1)[0]
        out.print(f"  Ollama clients: {root}:{settings.ollama_port} (and /api on every port)")
