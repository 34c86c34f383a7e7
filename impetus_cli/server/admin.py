"""Impetus's own routes: health, Prometheus metrics, the status snapshot, the event stream
(the dashboard's), and loading or unloading a model by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from impetus_cli import __version__
from impetus_cli.errors import ImpetusError, Overloaded
from impetus_cli.runtime.metrics import tier_gauges
from impetus_cli.server.http import blocking, client_gone, json_response, read_json
from impetus_cli.server.keys import MANAGER, STARTED, STOPPING, SUBSCRIBERS
from impetus_cli.server.protocols.fields import flag, keep_alive, model_id, obj
from impetus_cli.server.protocols.openai_render import sse

MAX_SUBSCRIBERS = 64  # /impetus/events readers at once; each costs a queue, not a thread


async def health(request: web.Request) -> web.Response:
    """``ok``, or ``degraded`` with each engine's last unexpected failure (the engine keeps
    serving; a later success clears it)."""
    manager = request.app[MANAGER]
    failures = {e.model.name: failure for e in manager.loaded() if (failure := e.engine.failure)}
    return json_response(
        {
            "status": "degraded" if failures else "ok",
            "version": __version__,
            "loaded": [e.model.name for e in manager.loaded()],
            "failures": failures,
            "uptime_s": round(time.time() - request.app[STARTED], 1),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    entries = manager.loaded()
    gauges = {
        "loaded_models": ("Models in memory.", [("", float(len(entries)))]),
        "model_planned_bytes": (
            "Planned bytes per loaded model.",
            [(f'model="{e.model.name}"', float(e.plan.total_bytes)) for e in entries],
        ),
        "model_resident_bytes": (
            "Bytes the backend reports per loaded model.",
            [(f'model="{e.model.name}"', float(e.engine.memory_bytes)) for e in entries],
        ),
        "memory_budget_bytes": ("The model memory budget.", [("", float(manager.memory_probe()))]),
        "events_subscribers": (
            "Readers of /impetus/events.",
            [("", float(request.app[SUBSCRIBERS][0]))],
        ),
    }
    gauges |= tier_gauges({e.model.name: getattr(e.engine, "cache_tiers", ()) for e in entries})
    return web.Response(
        text=manager.metrics.prometheus(gauges),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def status(request: web.Request) -> web.Response:
    snapshot = await blocking(request, request.app[MANAGER].status)
    return json_response(snapshot.to_json())


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of the manager's bus. A reader waits on the event loop, not in a
    worker thread, so idle dashboards cost nothing; their number is capped."""
    counter = request.app[SUBSCRIBERS]
    if counter[0] >= MAX_SUBSCRIBERS:
        raise Overloaded(f"{MAX_SUBSCRIBERS} clients already read /impetus/events.", "Retry later.")
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def notify() -> None:
        loop.call_soon_threadsafe(wake.set)

    subscription = request.app[MANAGER].bus.subscribe(notify=notify)
    counter[0] += 1
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        await response.prepare(request)
        while not client_gone(request) and not request.app[STOPPING].is_set():
            try:
                await asyncio.wait_for(wake.wait(), timeout=1.0)
            except TimeoutError:
                continue
            wake.clear()
            while (event := subscription.get(timeout=0)) is not None:
                await response.write(sse(event.to_dict()))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        counter[0] -= 1
        subscription.close()
    return response


def _load_body(body: Any) -> tuple[str, bool, float | None]:
    body = obj(body, "body")
    return model_id(body), flag(body, "pin"), keep_alive(body)


def _local(request: web.Request, name: str, verb: str) -> None:
    """A remote engine's model loads and unloads on its own server, not through this one."""
    if request.app[MANAGER].remotes.owns(name):
        raise ImpetusError(
            f"{name} runs on a remote engine: it {verb} there, not on this server.",
            "Send requests to it as they are; its server decides what stays loaded.",
            param="model",
        )


async def load(request: web.Request) -> web.Response:
    name, pin, keep = await read_json(request, _load_body)
    _local(request, name, "loads")
    plan = await blocking(request, request.app[MANAGER].load, name, pin=pin, keep_alive=keep)
    return json_response(
        {
            "model": name,
            "loaded": True,
            "n_ctx": plan.n_ctx,
            "n_parallel": plan.n_parallel,
            "planned_bytes": plan.total_bytes,
            "notes": list(plan.notes),
        }
    )


async def unload(request: web.Request) -> web.Response:
    name = await read_json(request, lambda body: model_id(obj(body, "body")))
    _local(request, name, "unloads")
    done = await blocking(request, request.app[MANAGER].unload, name)
    return json_response({"model": name, "unloaded": done})


ROUTES = {
    ("GET", "/health"): health,
    ("GET", "/metrics"): metrics,
    ("GET", "/impetus/status"): status,
    ("GET", "/impetus/events"): events,
    ("POST", "/impetus/load"): load,
    ("POST", "/impetus/unload"): unload,
}
