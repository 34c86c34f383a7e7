"""Builds the ServerStatus snapshot (runtime/status.py) from a running ModelManager."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

from impetus_cli.runtime.loaded import Loaded
from impetus_cli.runtime.metrics import BUCKET_S, WINDOW_S, Metrics
from impetus_cli.runtime.status import ModelStatus, ServerStatus, Throughput
from impetus_cli.runtime.types import HardwareProfile


class Source(Protocol):
    """What a status snapshot is made from (the ModelManager)."""

    hardware: HardwareProfile
    metrics: Metrics
    memory_probe: Callable[[], int]

    def loaded(self) -> list[Loaded]: ...


def model_status(manager: Source, e: Loaded, now: float) -> ModelStatus:
    snap = manager.metrics.model_snapshot(e.model.name)
    expires = None if e.pinned or e.keep_alive < 0 else max(0.0, e.keep_alive - (now - e.last_used))
    return ModelStatus(
        name=e.model.name,
        format=e.model.format,
        quantization=e.info.quantization or e.model.quantization,
        n_ctx=e.plan.n_ctx,
        n_parallel=e.plan.n_parallel,
        memory_bytes=e.engine.memory_bytes,
        planned_bytes=e.plan.total_bytes,
        keep_alive_s=e.keep_alive,
        expires_in_s=None if e.in_flight else expires,
        pinned=e.pinned,
        in_flight=e.in_flight,
        queued=e.waiting,
        loaded_at=e.loaded_at,
        plan_notes=tuple(e.plan.notes),
        base_model=e.info.base_model,
        requests=snap["requests"],
        prompt_tokens=snap["prompt_tokens"],
        completion_tokens=snap["completion_tokens"],
        cached_tokens=snap["cached_tokens"],
        cache_hit_rate=snap["cache_hit_rate"],
        tps_recent=snap["tps_recent"],
        loop_stops=snap["loop_stops"],
        speculative=e.plan.speculative,
        drafted_tokens=snap["drafted_tokens"],
        accepted_tokens=snap["accepted_tokens"],
        failure=e.engine.failure,
        placement=tuple(dataclasses.asdict(part) for part in e.plan.placement),
        cache_tiers=tuple(dataclasses.asdict(t) for t in getattr(e.engine, "cache_tiers", ())),
    )


def server_status(manager: Source, version: str) -> ServerStatus:
    import psutil

    from impetus_cli.runtime.hardware import as_dict

    now = time.time()
    memory = psutil.virtual_memory()
    entries = manager.loaded()
    models = tuple(model_status(manager, e, now) for e in entries)
    series = {
        e.model.name: tuple(manager.metrics.model_snapshot(e.model.name)["series"]) for e in entries
    }
    return ServerStatus(
        version=version,
        hardware=as_dict(manager.hardware),
        budget_bytes=manager.memory_probe(),
        used_bytes=sum(m.planned_bytes for m in models),
        system_memory={
            "total": memory.total,
            "available": memory.available,
            "percent": memory.percent,
        },
        models=models,
        throughput=Throughput(WINDOW_S, BUCKET_S, series),
        recent_requests=tuple(manager.metrics.recent_requests()),
    )
