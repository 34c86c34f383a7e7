"""Settings: defaults < IMPETUS_HOME/config.toml < IMPETUS_* environment < command-line flags.

``load_settings(flags)`` is the one entry point. Paths all hang off ``IMPETUS_HOME``
(default ``~/.impetus``), so a test points the whole program at a temporary directory with one
variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impetus_cli.errors import ConfigError
from impetus_cli.runtime.remote.config import RemoteConfig, parse_remotes

DEFAULT_MODEL = "gemma3:270m"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path("~/.impetus").expanduser())
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # A second port for Ollama's clients (they look at 11434 unless told); None: none.
    ollama_port: int | None = None
    default_model: str = DEFAULT_MODEL
    ctx: int | None = None  # None: chosen by the planner
    threads: int | None = None
    parallel: int | None = None
    memory_budget: int | None = None  # bytes; None: from the hardware
    keep_alive: float = 300.0  # seconds idle before unload; -1 = never
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    # Host names a loopback server answers besides localhost / 127.0.0.1 / [::1] (DNS rebinding)
    allowed_hosts: tuple[str, ...] = ()
    max_tokens: int = 8192  # a reply's limit when the request sets none
    loop_guard: bool = True  # stop replies that repeat themselves (runtime/loop_guard.py)
    queue_size: int = 16  # requests waiting per model before 503
    queue_timeout: float = 120.0  # seconds a request may wait for a slot
    min_ctx: int = 32768  # the context the planner aims for (agents send 13-18k tokens)
    kv_type: str = "f16"
    flash_attn: bool | None = None  # None: automatic
    # The prompt cache behind the KV cache (engines/prompt_tiers.py). ``prompt_cache`` switches
    # its disk tier (IMPETUS_HOME/prompt-cache, ``cache_disk`` bytes across models): on, so a
    # conversation survives a restart. ``cache_ram``: host RAM for conversations that leave
    # the KV cache, counted by the planner; None: an eighth of the memory budget, at most 8 GB.
    prompt_cache: bool = True
    cache_ram: int | None = None
    cache_disk: int = 20_000_000_000
    # Speculative decoding (engines/speculative.py): "off", "ngram" (drafts looked up in the
    # prompt and the reply so far: edits repeat their input), "draft" (each model's small
    # sibling from the catalog, where it is pulled) or a model's name to draft with; ``draft``
    # (--draft) names that model too.
    speculative: str = "ngram"
    draft: str | None = None
    ollama_models: Path = field(default_factory=lambda: Path("~/.ollama/models").expanduser())
    lmstudio_models: Path = field(default_factory=lambda: Path("~/.lmstudio/models").expanduser())
    discover: bool = True  # list other tools' models too
    # llama.cpp RPC workers (`impetus worker`) that GGUF models' layers are split across
    rpc: tuple[str, ...] = ()  # "host:port" each; runtime/rpc.py
    # OpenAI-compatible upstreams served as NAME/MODEL ([[remote]] tables, --remote [NAME=]URL)
    remote: tuple[RemoteConfig, ...] = ()  # runtime/remote

    @property
    def manifests_dir(self) -> Path:
        return self.home / "manifests"

    @property
    def bench_dir(self) -> Path:
        return self.home / "bench"

    @property
    def prompt_cache_dir(self) -> Path:
        return self.home / "prompt-cache"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_size(value: str | int | float) -> int:
    """'12GB' -> 12e9, '12GiB' -> 12 * 2**30, 1024 -> 1024."""
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(f"Not a size: {value!r}", "Use a number of bytes or e.g. 12GB, 12GiB.")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    if "i" in unit:
        return int(number * 1024 ** ("kmgt".index(unit[0]) + 1))
    return int(number * _UNITS[unit[:1]])


def _coerce(name: str, raw: Any, fields: dict[str, dataclasses.Field[Any]]) -> Any:
    """Turn a TOML or environment value into the field's type."""
    if name not in fields:
        raise ConfigError(
            f"Unknown setting {name!r}", f"Known settings: {', '.join(sorted(fields))}"
        )
    kind = str(fields[name].type)
    try:
        if raw is None:
            return None
        if name in ("memory_budget", "cache_ram", "cache_disk"):
            return parse_size(raw)
        if name == "remote":
            return parse_remotes(raw)
        if "Path" in kind:
            return Path(str(raw)).expanduser()
        if "tuple" in kind:
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind.startswith("bool"):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Bad value for {name}: {raw!r}", str(exc)) from exc


def home_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("IMPETUS_HOME") or "~/.impetus").expanduser()


def load_settings(
    flags: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Settings:
    """Merge the four layers. ``flags`` entries that are None mean 'not given'."""
    env = dict(os.environ) if env is None else env
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    home = home_dir(env)
    values: dict[str, Any] = {"home": home}
    config_file = home / "config.toml"
    if config_file.is_file():
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{config_file} is not valid TOML: {exc}", "Fix or remove it."
            ) from exc
        for key, raw in data.items():
            values[key.replace("-", "_")] = _coerce(key.replace("-", "_"), raw, fields)
    for key, raw in env.items():
        if key.startswith("IMPETUS_") and key != "IMPETUS_HOME" and key != "IMPETUS_DEBUG":
            name = key.removeprefix("IMPETUS_").lower()
            if name in fields:
                values[name] = _coerce(name, raw, fields)
    for key, raw in (flags or {}).items():
        if raw is not None:
            values[key] = _coerce(key, raw, fields)
    return Settings(**values)
