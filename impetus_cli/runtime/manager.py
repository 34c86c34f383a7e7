"""ModelManager: models loaded on demand within a memory budget, and the slots requests run in.

- A request leases a slot of its model (``start_chat`` / ``start_completion`` / ``embed``): the
  name is resolved, the model loaded if needed (single flight: concurrent first requests share
  one load), and the request waits, bounded, for a free slot. runtime/prepare.py then turns it
  into tokens, and the Generation gives the slot back through a callback when it ends.
- Memory: a load reserves its planned bytes before it starts, so two loads at the same moment
  cannot both pass the budget; it evicts least-recently-used idle models to make room.
- Unloading a model that is busy marks it closing: queued requests are refused (503, retry),
  running ones finish, and the engine closes when the last one ends.
- Keep-alive: a model idle longer than its keep-alive is unloaded by a reaper thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from impetus_cli import __version__
from impetus_cli.errors import ContextLengthExceeded, Overloaded, RequestCancelled
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.engines.base import Engine
from impetus_cli.runtime.generation import Generation, Outcome
from impetus_cli.runtime.loaded import Loaded, Ticker, no_room
from impetus_cli.runtime.loop_guard import LoopGuard
from impetus_cli.runtime.metrics import Event, EventBus, Metrics
from impetus_cli.runtime.prepare import Prepared, prepare_chat, prepare_completion
from impetus_cli.runtime.remote.registry import Remotes
from impetus_cli.runtime.resolver import ModelSource, Resolver
from impetus_cli.runtime.status import ServerStatus
from impetus_cli.runtime.status_report import server_status
from impetus_cli.runtime.types import (
    ChatRequest,
    CompletionRequest,
    HardwareProfile,
    LoadPlan,
    LocalModel,
    ModelInfo,
)

log = logging.getLogger("impetus.manager")
EngineFactory = Callable[[LoadPlan, ModelInfo], Engine]


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
        self.models = Resolver(
            settings, self.store, self.hardware, lambda: self.memory_probe(), allow_paths
        )
        self.bus = bus or EventBus()
        self.metrics = Metrics()
        self.allow_paths = allow_paths
        self._loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self._closing: list[Loaded] = []  # unloaded while busy; their memory is still in use
        self._loading: dict[str, threading.Event] = {}
        self._reserved: dict[str, int] = {}  # planned bytes of loads in flight
        self._load_errors: dict[str, BaseException] = {}
        self._lock = threading.RLock()
        self._reaper = Ticker(self._reap, name="impetus-keepalive")
        self.remotes = Remotes.of(settings, self.metrics, self.bus)  # NAME/MODEL upstreams

    # -- names and plans (runtime/resolver.py) ---------------------------------------------

    def available(self) -> list[LocalModel]:
        return self.models.available()

    def resolve(self, name: str) -> LocalModel:
        return self.models.resolve(name)

    def info(self, model: LocalModel) -> ModelInfo:
        return self.models.info(model)

    def plan(self, name: str) -> LoadPlan:
        """The model's plan as loaded, or as it would load now."""
        return self.plan_model(self.resolve(name))

    def plan_model(self, model: LocalModel) -> LoadPlan:
        with self._lock:
            if model.name in self._loaded:
                return self._loaded[model.name].plan
        return self.models.plan(model)

    # -- loading ----------------------------------------------------------------------------

    def load(self, name: str, *, pin: bool = False, keep_alive: float | None = None) -> LoadPlan:
        entry = self._checkout(self.resolve(name), keep_alive)
        with self._lock:
            entry.waiting -= 1
            entry.pinned = entry.pinned or pin
            entry.last_used = time.time()
        return entry.plan

    def unload(self, name: str) -> bool:
        """Unload now if idle; if busy, refuse queued requests and close after running ones."""
        model = self.resolve(name)
        with self._lock:
            entry = self._loaded.pop(model.name, None)
            if entry is None:
                return False
            entry.closing = True
            busy = not entry.idle
            if busy:
                self._closing.append(entry)
        if busy:  # wake the queue: each waiter sees `closing`, leaves, and wakes the next
            entry.slots.release()
        if not busy:
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
            plan, info = self.models.plan(model), self.models.info(model)
            self._reserve(plan.total_bytes, model.name)
            self.bus.publish(
                Event(
                    "loading", model.name, {"planned_bytes": plan.total_bytes, "n_ctx": plan.n_ctx}
                )
            )
            started = time.perf_counter()
            engine = self.engine_factory(plan, info)
            keep = self.settings.keep_alive if keep_alive is None else keep_alive
            entry = Loaded(
                model, info, plan, engine, threading.Semaphore(max(1, plan.n_parallel)), keep
            )
            with self._lock:
                self._loaded[model.name] = entry
            seconds = time.perf_counter() - started
            self.bus.publish(
                Event(
                    "loaded",
                    model.name,
                    {"seconds": seconds, "n_ctx": plan.n_ctx, "notes": list(plan.notes)},
                )
            )
            self._reaper.start()
        except BaseException as exc:
            with self._lock:
                self._load_errors[model.name] = exc
            self.bus.publish(Event("error", model.name, {"message": str(exc)}))
        finally:
            with self._lock:
                self._loading.pop(model.name, None)
                self._reserved.pop(model.name, None)
            done.set()

    def _used_bytes(self) -> int:
        """Planned bytes of loaded, closing and loading models (call under the lock)."""
        held = [*self._loaded.values(), *self._closing]
        return sum(e.plan.total_bytes for e in held) + sum(self._reserved.values())

    def _reserve(self, need: int, name: str) -> None:
        """Reserve ``need`` bytes for a load, evicting idle models until they fit."""
        budget = self.memory_probe()
        while True:
            with self._lock:
                used = self._used_bytes()
                if used + need <= budget:
                    self._reserved[name] = need
                    return
                victim = next((e for e in self._loaded.values() if e.idle and not e.pinned), None)
                if victim is None:
                    held = [*self._loaded.values(), *self._closing]
                    raise no_room(name, need, budget, used, held, list(self._reserved))
                del self._loaded[victim.model.name]
            self._close(victim, "evicted")

    def _close(self, entry: Loaded, reason: str) -> None:
        entry.engine.close()
        self.bus.publish(Event("unloaded", entry.model.name, {"reason": reason}))

    # -- requests ---------------------------------------------------------------------------

    def start_chat(self, request: ChatRequest, cancel: threading.Event | None = None) -> Generation:
        def prepare(engine: Engine) -> Prepared:
            return prepare_chat(engine, request, self.settings.max_tokens)

        return self._start(request, prepare, cancel)

    def start_completion(
        self, request: CompletionRequest, cancel: threading.Event | None = None
    ) -> Generation:
        def prepare(engine: Engine) -> Prepared:
            return prepare_completion(engine, request, self.settings.max_tokens)

        return self._start(request, prepare, cancel)

    def count_chat_tokens(self, request: ChatRequest, cancel: threading.Event | None = None) -> int:
        """The prompt tokens ``request`` takes on its model (count_tokens endpoints): prepared
        exactly as ``start_chat`` prepares it, nothing evaluated. A prompt over the context is
        counted all the same: clients ask in order to trim."""
        if self.remotes.owns(request.model):
            return self.remotes.count_chat_tokens(request, cancel)
        entry = self._lease(request.model, request.keep_alive, cancel)
        try:
            return len(prepare_chat(entry.engine, request, self.settings.max_tokens).tokens)
        except ContextLengthExceeded as exc:
            return exc.n_prompt
        finally:
            self._release(entry)

    def embed(self, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        if self.remotes.owns(model):
            return self.remotes.embed(model, texts)
        entry = self._lease(model, None)
        try:
            n_tokens = sum(len(entry.engine.tokenize(t)) for t in texts)
            return entry.engine.embed(texts), n_tokens
        finally:
            self._release(entry)

    def _start(
        self,
        request: ChatRequest | CompletionRequest,
        prepare: Callable[[Engine], Prepared],
        cancel: threading.Event | None,
    ) -> Generation:
        """Lease a slot, prepare the request on its engine, and start the generation; the
        slot goes back when the generation ends (or here, if anything fails first)."""
        if self.remotes.owns(request.model):
            return self.remotes.start(request, cancel)
        cancel = cancel or threading.Event()
        if request.num_ctx:
            self._fit_context(self.resolve(request.model), request.num_ctx)
        entry = self._lease(request.model, request.keep_alive, cancel)
        try:
            job = prepare(entry.engine)
            stream = entry.engine.generate(job.tokens, job.sampling, cancel, job.instructions)
            self.bus.publish(
                Event("request_started", entry.model.name, {"prompt_tokens": len(job.tokens)})
            )
            return Generation(
                stream,
                model=entry.model.name,
                prompt_tokens=len(job.tokens),
                max_tokens=job.sampling.max_tokens or 0,
                cancel=cancel,
                on_end=lambda outcome: self._ended(entry, len(job.tokens), outcome),
                on_tokens=lambda n: self.metrics.count_tokens(entry.model.name, n),
                parser=job.parser,
                guard=LoopGuard() if self.settings.loop_guard else None,
                token_bytes=entry.engine.token_bytes,
            )
        except BaseException:
            self._release(entry)
            raise

    def _fit_context(self, model: LocalModel, num_ctx: int) -> None:
        """A client asks for more context than the model is loaded with (Ollama's num_ctx):
        reload it with that context if it fits and the model is idle; never truncate."""
        if self.plan_model(model).n_ctx >= num_ctx:
            return
        self.models.want_context(model, num_ctx)  # raises if it cannot have that much
        with self._lock:
            entry = self._loaded.get(model.name)
            if entry is not None and (not entry.idle or entry.pinned):
                raise Overloaded(
                    f"{model.name} is loaded with a {entry.plan.n_ctx}-token context and busy; "
                    f"num_ctx {num_ctx} needs a reload.",
                    "Retry when its requests are done.",
                )
            if entry is not None:
                del self._loaded[model.name]
        if entry is not None:
            self._close(entry, f"reload with a {num_ctx}-token context")

    def _lease(
        self, name: str, keep_alive: float | None, cancel: threading.Event | None = None
    ) -> Loaded:
        """A slot on the named model: loaded if needed, then a bounded wait in its queue that
        ends early if ``cancel`` is set (the client hung up)."""
        entry = self._checkout(self.resolve(name), keep_alive)
        with self._lock:
            if entry.waiting > entry.plan.n_parallel + self.settings.queue_size:
                entry.waiting -= 1
                raise Overloaded(
                    f"{entry.model.name} has {entry.waiting} requests waiting.", "Retry shortly."
                )
        acquired = entry.wait_slot(self.settings.queue_timeout, cancel)
        with self._lock:
            entry.waiting -= 1
            if acquired and not entry.closing:
                entry.in_flight += 1
                return entry
        if acquired:
            entry.slots.release()
            self._close_if_drained(entry)
            raise Overloaded(f"{entry.model.name} was unloaded.", "Retry to load it again.")
        if cancel is not None and cancel.is_set():
            raise RequestCancelled("The client left while its request waited for a slot.")
        raise Overloaded(
            f"{entry.model.name} is busy: no slot within {self.settings.queue_timeout:.0f} s.",
            "Retry shortly.",
        )

    def _ended(self, entry: Loaded, prompt: int, outcome: Outcome) -> None:
        """A generation's end: the slot goes back, the counters and the event bus hear of it."""
        self._release(entry)
        record = self.metrics.finish(
            entry.model.name, prompt, outcome.final, outcome.status, outcome.stopped_by
        )
        reason = outcome.final.finish_reason if outcome.final else None
        self.bus.publish(
            Event("request_finished", entry.model.name, {**asdict(record), "finish_reason": reason})
        )

    def _release(self, entry: Loaded) -> None:
        """The slot goes back; keep_alive 0 unloads right after; a closing model may close."""
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
        self._close_if_drained(entry)
        self.store.touch(entry.model.name)  # best effort; the store ignores others' models

    def _close_if_drained(self, entry: Loaded) -> None:
        with self._lock:
            drained = entry in self._closing and entry.idle
            if drained:
                self._closing.remove(entry)
        if drained:
            self._close(entry, "unload")

    # -- status and lifetime ----------------------------------------------------------------

    def _reap(self) -> None:
        """Unload the models idle for longer than their keep-alive (every second, in a thread)."""
        now = time.time()
        with self._lock:
            expired = [e for e in self._loaded.values() if e.expired(now)]
            for entry in expired:
                del self._loaded[entry.model.name]
        for entry in expired:
            self._close(entry, "keep_alive expired")

    def loaded(self) -> list[Loaded]:
        with self._lock:
            return list(self._loaded.values())

    def status(self) -> ServerStatus:
        return self.remotes.add_to(server_status(self, __version__))

    def close(self) -> None:
        self._reaper.stop()
        self.remotes.close()
        with self._lock:
            entries = [*self._loaded.values(), *self._closing]
            self._loaded.clear()
            self._closing.clear()
        for entry in entries:
            self._close(entry, "shutdown")
        self.store.flush()
