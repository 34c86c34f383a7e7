"""ModelManager: models loaded on demand within a memory budget, and requests run on them.

- ``start_chat`` / ``start_completion`` resolve the name, load the model if needed (single
  flight: concurrent first requests share one load), queue for a slot, render and tokenize, and
  check the context, all before they return, so the server can answer 4xx before streaming.
- Loads evict least-recently-used idle models to make room; pinned or busy ones stay.
- Keep-alive: a model idle longer than its keep-alive is unloaded by a reaper thread.

``status()`` returns this JSON-ready snapshot (the dashboard and `impetus ps` read it):
``{"version", "hardware": {...}, "budget_bytes", "used_bytes", "system_memory": {"total",
"available", "percent"}, "models": [{"name", "format", "quantization", "n_ctx", "n_parallel",
"memory_bytes", "planned_bytes", "keep_alive_s", "expires_in_s", "pinned", "in_flight", "queued",
"requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_hit_rate",
"tps_recent", "loaded_at", "plan_notes"}], "throughput": {"window_s", "bucket_s", "series":
{model: [tokens/s per bucket]}}, "recent_requests": [{"time", "model", "prompt_tokens",
"completion_tokens", "cached_tokens", "ttft_s", "tps", "status"}]}``
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from impetus_cli import __version__
from impetus_cli.errors import (
    ContextLengthExceeded,
    ImpetusError,
    InsufficientMemory,
    ModelNotFound,
    Overloaded,
)
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.engines.base import Engine
from impetus_cli.runtime.generation import Generation
from impetus_cli.runtime.metrics import BUCKET_S, WINDOW_S, Event, EventBus, Metrics
from impetus_cli.runtime.types import (
    ChatRequest,
    CompletionRequest,
    HardwareProfile,
    LoadPlan,
    LocalModel,
    ModelInfo,
)

EngineFactory = Callable[[LoadPlan, ModelInfo], Engine]


class ModelSource(Protocol):
    def list(self) -> list[LocalModel]: ...
    def get(self, name: str) -> LocalModel: ...
    def touch(self, name: str) -> None: ...


@dataclass
class Loaded:
    """A model in memory and its bookkeeping (guarded by the manager's lock)."""

    model: LocalModel
    info: ModelInfo
    plan: LoadPlan
    engine: Engine
    slots: threading.Semaphore
    keep_alive: float
    pinned: bool = False
    in_flight: int = 0
    waiting: int = 0
    last_used: float = field(default_factory=time.time)
    loaded_at: float = field(default_factory=time.time)

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0


def _default_factory(plan: LoadPlan, info: ModelInfo) -> Engine:
    from impetus_cli.runtime.engines import load_engine

    return load_engine(plan, info)


class ModelManager:
    def __init__(
        self,
        settings: Settings,
        *,
        store: ModelSource | None = None,
        hardware: HardwareProfile | None = None,
        engine_factory: EngineFactory | None = None,
        memory_probe: Callable[[], int] | None = None,
        bus: EventBus | None = None,
        allow_paths: bool = True,
    ):
        from impetus_cli.runtime import hardware as hw_module
        from impetus_cli.runtime.store import Store

        self.settings = settings
        self.store: ModelSource = store or Store(settings)
        self.hardware = hardware or hw_module.detect()
        self.engine_factory = engine_factory or _default_factory
        self.memory_probe = memory_probe or (
            lambda: hw_module.memory_budget(self.hardware, settings)
        )
        self.bus = bus or EventBus()
        self.metrics = Metrics()
        self.allow_paths = allow_paths
        self._loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._load_errors: dict[str, BaseException] = {}
        self._lock = threading.RLock()
        self._infos: dict[Path, ModelInfo] = {}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- names ------------------------------------------------------------------------------

    def available(self) -> list[LocalModel]:
        return self.store.list()

    def resolve(self, name: str) -> LocalModel:
        """A known model by name; a local path too when allowed (never over HTTP)."""
        name = name.strip()
        if not name:
            raise ImpetusError(
                "No model named.", "Pass a model id, e.g. gemma3:270m.", param="model"
            )
        if self.allow_paths and (name.startswith(("/", "./", "~")) or name.endswith(".gguf")):
            return self._path_model(Path(name).expanduser())
        try:
            return self.store.get(name)
        except ModelNotFound as exc:
            names = [m.name for m in self.available()]
            listing = ", ".join(names[:20]) or "none"
            raise ModelNotFound(
                f"The model {name!r} does not exist. Available models: {listing}.",
                exc.hint,
                suggestions=exc.suggestions,
            ) from None

    def _path_model(self, path: Path) -> LocalModel:
        from impetus_cli.runtime.inspect import detect_format

        fmt = detect_format(path)
        size = (
            path.stat().st_size
            if path.is_file()
            else sum(p.stat().st_size for p in path.glob("*") if p.is_file())
        )
        return LocalModel(name=str(path), format=fmt, path=path, origin="path", size_bytes=size)

    def info(self, model: LocalModel) -> ModelInfo:
        from impetus_cli.runtime.inspect import inspect_model
        from impetus_cli.runtime.store import ensure_builtin_file

        if model.origin == "builtin":
            ensure_builtin_file(model)
        if model.path not in self._infos:
            self._infos[model.path] = inspect_model(model.path)
        return self._infos[model.path]

    def plan(self, name: str) -> LoadPlan:
        model = self.resolve(name)
        with self._lock:
            if model.name in self._loaded:
                return self._loaded[model.name].plan
        return self._plan(model)[0]

    def _plan(self, model: LocalModel) -> tuple[LoadPlan, ModelInfo]:
        from impetus_cli.runtime.tuning import plan_load

        info = self.info(model)
        return plan_load(model, info, self.hardware, self.settings, self.memory_probe()), info

    # -- loading ----------------------------------------------------------------------------

    def load(self, name: str, *, pin: bool = False, keep_alive: float | None = None) -> LoadPlan:
        entry = self._checkout(self.resolve(name), keep_alive)
        with self._lock:
            entry.waiting -= 1
            entry.pinned = entry.pinned or pin
            entry.last_used = time.time()
        return entry.plan

    def unload(self, name: str) -> bool:
        model = self.resolve(name)
        with self._lock:
            entry = self._loaded.pop(model.name, None)
        if entry is None:
            return False
        self._close(entry, "unload")
        return True

    def _checkout(self, model: LocalModel, keep_alive: float | None) -> Loaded:
        """The loaded entry with ``waiting`` raised (so it cannot be evicted), loading it once
        however many threads ask at the same time."""
        while True:
            with self._lock:
                entry = self._loaded.get(model.name)
                if entry is not None:
                    entry.waiting += 1
                    if keep_alive is not None:
                        entry.keep_alive = keep_alive
                    self._loaded.move_to_end(model.name)
                    return entry
                done = self._loading.get(model.name)
                leader = done is None
                if leader:
                    done = self._loading[model.name] = threading.Event()
                    self._load_errors.pop(model.name, None)
            assert done is not None
            if leader:
                self._load(model, keep_alive, done)
            else:
                done.wait()
            with self._lock:
                if model.name in self._load_errors and model.name not in self._loaded:
                    raise self._load_errors[model.name]

    def _load(self, model: LocalModel, keep_alive: float | None, done: threading.Event) -> None:
        try:
            plan, info = self._plan(model)
            self._make_room(plan.total_bytes, model.name)
            self.bus.publish(
                Event(
                    "loading", model.name, {"planned_bytes": plan.total_bytes, "n_ctx": plan.n_ctx}
                )
            )
            started = time.perf_counter()
            engine = self.engine_factory(plan, info)
            entry = Loaded(
                model,
                info,
                plan,
                engine,
                threading.Semaphore(max(1, plan.n_parallel)),
                self.settings.keep_alive if keep_alive is None else keep_alive,
            )
            with self._lock:
                self._loaded[model.name] = entry
            self.bus.publish(
                Event(
                    "loaded",
                    model.name,
                    {
                        "seconds": time.perf_counter() - started,
                        "n_ctx": plan.n_ctx,
                        "notes": list(plan.notes),
                    },
                )
            )
            self._start_reaper()
        except BaseException as exc:
            with self._lock:
                self._load_errors[model.name] = exc
            self.bus.publish(Event("error", model.name, {"message": str(exc)}))
        finally:
            with self._lock:
                self._loading.pop(model.name, None)
            done.set()

    def _make_room(self, need: int, name: str) -> None:
        budget = self.memory_probe()
        while True:
            with self._lock:
                used = sum(e.plan.total_bytes for e in self._loaded.values())
                if used + need <= budget:
                    return
                victim = next((e for e in self._loaded.values() if e.idle and not e.pinned), None)
                if victim is None:
                    loaded = ", ".join(
                        f"{e.model.name} ({e.plan.total_bytes / 1e9:.1f} GB)"
                        for e in self._loaded.values()
                    )
                    raise InsufficientMemory(
                        f"{name} needs {need / 1e9:.1f} GB but only {(budget - used) / 1e9:.1f} GB of the "
                        f"{budget / 1e9:.1f} GB budget is free; loaded and busy: {loaded or 'nothing'}.",
                        "Wait for running requests to finish, unload a model, or raise --memory-budget.",
                    )
                del self._loaded[victim.model.name]
            self._close(victim, "evicted")

    def _close(self, entry: Loaded, reason: str) -> None:
        entry.engine.close()
        self.bus.publish(Event("unloaded", entry.model.name, {"reason": reason}))

    # -- requests ---------------------------------------------------------------------------

    def _enter(self, entry: Loaded) -> None:
        """Wait for a slot (entry.waiting already counts us); bounded queue and wait."""
        with self._lock:
            if entry.waiting > entry.plan.n_parallel + self.settings.queue_size:
                entry.waiting -= 1
                raise Overloaded(
                    f"{entry.model.name} has {entry.waiting} requests waiting.", "Retry shortly."
                )
        if not entry.slots.acquire(timeout=self.settings.queue_timeout):
            with self._lock:
                entry.waiting -= 1
            raise Overloaded(
                f"{entry.model.name} is busy: no slot within {self.settings.queue_timeout:.0f} s.",
                "Retry shortly.",
            )
        with self._lock:
            entry.waiting -= 1
            entry.in_flight += 1

    def release(self, entry: Loaded) -> None:
        """Called by Generation when it ends; applies keep_alive 0 (unload right after)."""
        entry.slots.release()
        with self._lock:
            entry.in_flight -= 1
            entry.last_used = time.time()
            unload = (
                entry.keep_alive == 0
                and entry.idle
                and not entry.pinned
                and self._loaded.get(entry.model.name) is entry
            )
            if unload:
                del self._loaded[entry.model.name]
        if unload:
            self._close(entry, "keep_alive 0")
        if entry.model.origin == "impetus":
            self.store.touch(entry.model.name)

    def _acquire(self, name: str, keep_alive: float | None) -> Loaded:
        entry = self._checkout(self.resolve(name), keep_alive)
        self._enter(entry)
        return entry

    def start_chat(self, request: ChatRequest, cancel: threading.Event | None = None) -> Generation:
        from impetus_cli.runtime.grammar import grammar_for
        from impetus_cli.runtime.templates import stop_strings_for

        entry = self._acquire(request.model, request.keep_alive)
        try:
            tools = request.tools if request.tool_choice != "none" else ()
            prompt = entry.engine.render(request.messages, tools)
            tokens = entry.engine.tokenize(prompt)
            stops = request.sampling.stop + stop_strings_for(
                entry.info.architecture, entry.info.chat_template
            )
            sampling = replace(
                request.sampling,
                stop=stops,
                grammar=grammar_for(request.response_format) or request.sampling.grammar,
            )
            return self._generation(entry, tokens, sampling, cancel, tools=bool(tools))
        except BaseException:
            self.release(entry)
            raise

    def start_completion(
        self, request: CompletionRequest, cancel: threading.Event | None = None
    ) -> Generation:
        entry = self._acquire(request.model, request.keep_alive)
        try:
            prompt = (
                request.prompt
                if request.suffix is None
                else self._fim_prompt(entry, request.prompt, request.suffix)
            )
            tokens = entry.engine.tokenize(prompt)
            return self._generation(entry, tokens, request.sampling, cancel, tools=False)
        except BaseException:
            self.release(entry)
            raise

    def _fim_prompt(self, entry: Loaded, prefix: str, suffix: str) -> str:
        specials: dict[str, int] = getattr(entry.engine, "special_tokens", {})
        text = getattr(entry.engine, "token_text", None)
        ids = [specials.get(k, -1) for k in ("fim_pre", "fim_suf", "fim_mid")]
        if text is None or min(ids) < 0:
            raise ImpetusError(
                f"{entry.model.name} has no fill-in-the-middle tokens, so `suffix` is not supported.",
                "Send the prompt without a suffix, or use a code model such as qwen2.5-coder.",
                param="suffix",
            )
        pre, suf, mid = (text(i) for i in ids)
        return f"{pre}{prefix}{suf}{suffix}{mid}"

    def _generation(
        self,
        entry: Loaded,
        tokens: list[int],
        sampling: Any,
        cancel: threading.Event | None,
        *,
        tools: bool,
    ) -> Generation:
        n_ctx = entry.engine.n_ctx
        if len(tokens) >= n_ctx:
            raise ContextLengthExceeded(n_ctx, len(tokens))
        room = n_ctx - len(tokens)
        max_tokens = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        sampling = replace(sampling, max_tokens=max_tokens)
        style = None
        if tools:
            from impetus_cli.runtime.templates import tool_call_style

            style = tool_call_style(entry.info.architecture, entry.info.chat_template)
        self.bus.publish(Event("request_started", entry.model.name, {"prompt_tokens": len(tokens)}))
        return Generation(self, entry, tokens, sampling, cancel or threading.Event(), style)

    def embed(self, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        entry = self._acquire(model, None)
        try:
            n_tokens = sum(len(entry.engine.tokenize(t)) for t in texts)
            return entry.engine.embed(texts), n_tokens
        finally:
            self.release(entry)

    # -- status and lifetime ----------------------------------------------------------------

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="impetus-keepalive", daemon=True
                )
                self._reaper.start()

    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            now = time.time()
            with self._lock:
                expired = [
                    e
                    for e in self._loaded.values()
                    if e.idle
                    and not e.pinned
                    and e.keep_alive >= 0
                    and now - e.last_used > e.keep_alive
                ]
                for entry in expired:
                    del self._loaded[entry.model.name]
            for entry in expired:
                self._close(entry, "keep_alive expired")

    def loaded(self) -> list[Loaded]:
        with self._lock:
            return list(self._loaded.values())

    def status(self) -> dict[str, Any]:
        import psutil

        from impetus_cli.runtime.hardware import as_dict

        now = time.time()
        memory = psutil.virtual_memory()
        models, series = [], {}
        for e in self.loaded():
            snap = self.metrics.model_snapshot(e.model.name)
            series[e.model.name] = snap.pop("series")
            expires = (
                None
                if e.pinned or e.keep_alive < 0
                else max(0.0, e.keep_alive - (now - e.last_used))
            )
            models.append(
                {
                    "name": e.model.name,
                    "format": e.model.format,
                    "quantization": e.info.quantization or e.model.quantization,
                    "n_ctx": e.plan.n_ctx,
                    "n_parallel": e.plan.n_parallel,
                    "memory_bytes": e.engine.memory_bytes,
                    "planned_bytes": e.plan.total_bytes,
                    "keep_alive_s": e.keep_alive,
                    "expires_in_s": None if e.in_flight else expires,
                    "pinned": e.pinned,
                    "in_flight": e.in_flight,
                    "queued": e.waiting,
                    "loaded_at": e.loaded_at,
                    "plan_notes": list(e.plan.notes),
                    **snap,
                }
            )
        return {
            "version": __version__,
            "hardware": as_dict(self.hardware),
            "budget_bytes": self.memory_probe(),
            "used_bytes": sum(m["planned_bytes"] for m in models),
            "system_memory": {
                "total": memory.total,
                "available": memory.available,
                "percent": memory.percent,
            },
            "models": models,
            "throughput": {"window_s": WINDOW_S, "bucket_s": BUCKET_S, "series": series},
            "recent_requests": self.metrics.recent_requests(),
        }

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            entries = list(self._loaded.values())
            self._loaded.clear()
        for entry in entries:
            self._close(entry, "shutdown")
