"""The remote upstreams a server proxies: ``--remote [NAME=]URL`` (repeatable),
``IMPETUS_REMOTE`` (comma-separated) or ``[[remote]]`` tables in config.toml.

A URL is taken with or without its trailing ``/v1``; the name defaults to the URL's host. The
upstream's key is never written here: ``api_key_env`` names the environment variable that
holds it, read when a request is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from impetus_cli.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEYS = ("name", "url", "api_key_env", "models", "timeout", "connect_timeout", "retry_max")


@dataclass(frozen=True)
class RemoteConfig:
    """One upstream. ``url`` is its OpenAI base URL (ending in ``/v1``); ``models`` are
    shell-style patterns of the upstream's model ids to expose (empty: all); ``timeout`` bounds
    the wait for the first byte of a reply and between two chunks; ``connect_timeout`` the TCP
    (and TLS) connection; ``retry_max`` the longest wait between two probes of a down
    upstream."""

    name: str
    url: str
    api_key_env: str | None = None
    models: tuple[str, ...] = ()
    timeout: float = 600.0
    connect_timeout: float = 10.0
    retry_max: float = 30.0

    @property
    def root(self) -> str:
        """The server's root URL (the base URL without its ``/v1``)."""
        return self.url.removesuffix("/v1")


def base_url(raw: str) -> str:
    """``http(s)://host[:port][/prefix]`` -> the same ending in ``/v1``; refused if it is not
    an http(s) URL or carries credentials (they belong in ``api_key_env``)."""
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"Not a URL: {raw!r}.", "Use e.g. --remote http://gpu-box:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"Not an http(s) URL: {raw!r}.", "Use e.g. --remote gpu=http://gpu-box:8000/v1"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "A remote URL must not carry credentials.",
            "Put the key in an environment variable and name it with api_key_env.",
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"A remote URL takes no query or fragment: {raw!r}.")
    return url if parts.path.endswith("/v1") else f"{url}/v1"


def default_name(url: str) -> str:
    """The host of ``url``, as a name (an IPv6 address's colons become dashes)."""
    return (urlsplit(url).hostname or "").replace(":", "-").strip("-.") or "remote"


def _number(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"remote {key} must be a positive number of seconds, not {value!r}.")
    return float(value)


def _patterns(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError("remote models must be a list of model ids or patterns (e.g. 'qwen*').")
    return tuple(i.strip() for i in items if i.strip())


def _key_env(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not ENV_NAME.match(value):
        # The value is not echoed: it may be the key itself, put there by mistake.
        raise ConfigError(
            "remote api_key_env must name an environment variable (e.g. VLLM_API_KEY), "
            "not hold the key.",
            'export VLLM_API_KEY=... and write api_key_env = "VLLM_API_KEY".',
        )
    return value


def from_table(table: Mapping[str, Any]) -> RemoteConfig:
    """One ``[[remote]]`` table."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"Unknown key(s) in a [[remote]] table: {', '.join(unknown)}.",
            f"Known keys: {', '.join(KEYS)}.",
        )
    if not isinstance(table.get("url"), str):
        raise ConfigError("A [[remote]] table needs a url.", 'url = "http://gpu-box:8000/v1"')
    url = base_url(table["url"])
    name = table.get("name") or default_name(url)
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            f"Bad remote name {name!r}.", "Use letters, digits, '.', '_' or '-' (no '/')."
        )
    return RemoteConfig(
        name=name,
        url=url,
        api_key_env=_key_env(table.get("api_key_env")),
        models=_patterns(table.get("models")),
        timeout=_number(table, "timeout", RemoteConfig.timeout),
        connect_timeout=_number(table, "connect_timeout", RemoteConfig.connect_timeout),
        retry_max=_number(table, "retry_max", RemoteConfig.retry_max),
    )


def from_spec(spec: str) -> RemoteConfig:
    """``[NAME=]URL``, as ``--remote`` and ``IMPETUS_REMOTE`` give it."""
    name, sep, url = spec.strip().partition("=")
    if not sep or "://" in name:  # no NAME= (a URL may hold '=' only after '://')
        return from_table({"url": spec.strip()})
    return from_table({"name": name.strip(), "url": url})


def parse_remotes(raw: Any) -> tuple[RemoteConfig, ...]:
    """Every upstream from a setting's raw value: a list of tables (config.toml), a list of
    specs (flags), or one comma-separated string (the environment). Names must differ."""
    if isinstance(raw, str):
        raw = [s for s in raw.split(",") if s.strip()]
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise ConfigError("remote must be a list of [[remote]] tables or [NAME=]URL strings.")
    configs = []
    for item in raw:
        if isinstance(item, RemoteConfig):
            configs.append(item)
        elif isinstance(item, str):
            configs.append(from_spec(item))
        elif isinstance(item, Mapping):
            configs.append(from_table(item))
        else:
            raise ConfigError(f"Not a remote: {item!r}.", "Use [NAME=]URL or a [[remote]] table.")
    names = [c.name for c in configs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"Two remotes are named {name!r}.", "Name them: --remote NAME=URL (or name = ...)."
            )
    return tuple(configs)
