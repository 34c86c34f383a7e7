"""Field validation shared by every dialect's parser. Strict about what we use, silent about
what we do not: unknown fields are ignored (rejecting them breaks real clients); a bad value
raises ImpetusError with ``param`` set, which becomes a 400 in the caller's dialect."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from impetus_cli.errors import ImpetusError

MAX_MESSAGES = 100_000  # more is not a conversation; bounded so validation stays quick


def bad(message: str, param: str | None = None) -> ImpetusError:
    return ImpetusError(message, param=param)


def obj(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise bad(f"'{param}' must be an object.", param)
    return value


def number(
    body: Mapping[str, Any], key: str, lo: float, hi: float, default: float | None, param: str = ""
) -> float | None:
    value = body.get(key)
    param = param or key
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"'{param}' must be a number.", param)
    if not lo <= value <= hi:
        raise bad(f"'{param}' must be between {lo} and {hi}, got {value}.", param)
    return float(value)


def integer(body: Mapping[str, Any], key: str, lo: int, hi: int, param: str = "") -> int | None:
    value = body.get(key)
    param = param or key
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{param}' must be an integer.", param)
    if not lo <= value <= hi:
        raise bad(f"'{param}' must be between {lo} and {hi}, got {value}.", param)
    return value


def flag(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{key}' must be a boolean.", key)
    return value


def text(body: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise bad(f"'{key}' must be a string.", key)
    return value


def model_id(body: Mapping[str, Any]) -> str:
    """The ``model`` field's shape; the manager resolves the name itself."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad("'model' is required and must be a string.", "model")
    if len(model) > 256 or "\x00" in model:
        raise bad("'model' is not a valid model id.", "model")
    return model.strip()


def keep_alive(body: Mapping[str, Any]) -> float | None:
    """Seconds, or a duration string as Ollama takes it ("5m", "1h", "30s"); -1 forever."""
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, str):
        value = _duration(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(
            "'keep_alive' is seconds: 0 unloads after the request, -1 keeps the model loaded.",
            "keep_alive",
        )
    return -1.0 if value < 0 else float(value)


def _duration(value: str) -> float | None:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    raw = value.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if raw.endswith(unit):
            try:
                return float(raw[: -len(unit)]) * units[unit]
            except ValueError:
                return None
    try:
        return float(raw)
    except ValueError:
        return None


def stop_list(value: Any, param: str, limit: int = 64) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and len(value) <= limit and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise bad(f"'{param}' must be a string or a list of up to {limit} strings.", param)


def max_tokens(body: Mapping[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` present: a positive integer (0 and negatives are a 400, as in
    OpenAI's API); None when absent (the server default applies)."""
    for key in keys:
        if body.get(key) is not None:
            return integer(body, key, 1, 10_000_000)
    return None
