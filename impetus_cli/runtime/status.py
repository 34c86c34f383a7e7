"""The server's status as one typed, frozen snapshot: the manager builds it, the server sends
it as JSON (``/impetus/status``), and ``impetus ps`` and the dashboard read it back with
``from_json``. The JSON keys are the field names; unknown keys are ignored when reading, so an
older client can watch a newer server."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ModelStatus:
    """One loaded model: its plan, its load, and its counters since it was loaded."""

    name: str
    format: str
    quantization: str | None = None
    n_ctx: int = 0
    n_parallel: int = 1
    memory_bytes: int = 0
    planned_bytes: int = 0
    keep_alive_s: float = 0.0
    expires_in_s: float | None = None
    pinned: bool = False
    in_flight: int = 0
    queued: int = 0
    loaded_at: float = 0.0
    plan_notes: tuple[str, ...] = ()
    base_model: bool = False
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_hit_rate: float = 0.0
    tps_recent: float = 0.0
    loop_stops: int = 0  # replies the runaway guard ended
    speculative: str = "off"  # speculative decoding: off, ngram, or draft (a draft model)
    drafted_tokens: int = 0  # tokens drafted, and of them those the model accepted
    accepted_tokens: int = 0
    failure: str | None = None  # the engine's last unexpected failure, if any
    # A model split across llama.cpp RPC workers: where each part lives, workers first (the
    # fields of runtime.types.Placement: where, first, last, weights_bytes, kv_bytes, ...)
    placement: tuple[dict[str, Any], ...] = ()
    # The prompt cache behind the KV cache, one dict per tier (engines/prompt_tiers.TierStats:
    # tier "ram" or "disk", entries, bytes, budget, hits, tokens restored since load)
    cache_tiers: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, as the dashboard's request log shows it."""

    time: float
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float = 0.0
    tps: float = 0.0
    status: int | str = 200
    stopped_by: str | None = None  # "loop": the runaway guard ended the reply


@dataclass(frozen=True)
class Throughput:
    window_s: int = 300
    bucket_s: int = 5
    series: dict[str, tuple[float, ...]] = field(default_factory=dict)  # model -> tokens/s


@dataclass(frozen=True)
class RemoteStatus:
    """One remote upstream (runtime/remote): its state ("unknown", "up" or "down"), the
    models it serves as ``NAME/MODEL``, and why it is down. Never its key."""

    name: str
    url: str
    state: str = "unknown"
    models: tuple[str, ...] = ()
    last_error: str | None = None
    in_flight: int = 0
    requests: int = 0
    retry_in_s: float | None = None  # while down: seconds until the next probe
    checked_at: float = 0.0


@dataclass(frozen=True)
class ServerStatus:
    version: str
    hardware: dict[str, Any] = field(default_factory=dict)
    budget_bytes: int = 0
    used_bytes: int = 0
    system_memory: dict[str, float] = field(default_factory=dict)  # total, available, percent
    models: tuple[ModelStatus, ...] = ()
    throughput: Throughput = field(default_factory=Throughput)
    recent_requests: tuple[RequestRecord, ...] = ()
    remotes: tuple[RemoteStatus, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerStatus:
        """Read what ``to_json`` wrote (or a server of another version wrote)."""
        throughput = data.get("throughput") or {}
        return _build(
            cls,
            data,
            models=tuple(_build(ModelStatus, m) for m in data.get("models") or ()),
            throughput=_build(
                Throughput,
                throughput,
                series={k: tuple(v) for k, v in (throughput.get("series") or {}).items()},
            ),
            recent_requests=tuple(
                _build(RequestRecord, r) for r in data.get("recent_requests") or ()
            ),
            remotes=tuple(_build(RemoteStatus, r) for r in data.get("remotes") or ()),
        )

    def model(self, name: str) -> ModelStatus | None:
        return next((m for m in self.models if m.name == name), None)


def _build(kind: type[T], data: dict[str, Any], **override: Any) -> T:
    """``kind`` from the keys of ``data`` that it has (lists become tuples)."""
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return kind(**{**values, **override})
