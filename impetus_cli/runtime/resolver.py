"""Names to models, and models to their facts and load plans, each computed once.

The manager asks here what a name means (a model in the store, or over the CLI a local path),
what the model's file says (runtime/inspect.py) and how it would load on this machine
(runtime/tuning.py). Facts are cached per file and plans per file and memory budget, so listing
models (``/v1/models``, the dashboard twice a second) costs no walk and no planning twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from impetus_cli.errors import ImpetusError, ModelNotFound
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.types import HardwareProfile, LoadPlan, LocalModel, ModelInfo


class ModelSource(Protocol):
    def list(self) -> list[LocalModel]: ...
    def get(self, name: str) -> LocalModel: ...
    def touch(self, name: str) -> None: ...
    def flush(self) -> None: ...


class Resolver:
    def __init__(
        self,
        settings: Settings,
        store: ModelSource,
        hardware: HardwareProfile,
        budget: Callable[[], int],
        allow_paths: bool,
    ):
        self.settings, self.store, self.hardware = settings, store, hardware
        self.budget, self.allow_paths = budget, allow_paths
        self._lock = threading.Lock()
        self._infos: dict[Path, ModelInfo] = {}
        self._plans: dict[tuple[Path, int, int | None], LoadPlan] = {}
        self._contexts: dict[str, int] = {}  # contexts clients asked for (num_ctx), per model

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

    @staticmethod
    def _path_model(path: Path) -> LocalModel:
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
        with self._lock:
            known = self._infos.get(model.path)
        if known is None:
            known = inspect_model(model.path)
            with self._lock:
                self._infos[model.path] = known
        return known

    def want_context(self, model: LocalModel, num_ctx: int) -> None:
        """A client asked for ``num_ctx`` tokens of context (Ollama's num_ctx): the model's
        next load plans with it, if it can have that much here."""
        from impetus_cli.errors import ContextUnavailable

        plan = self.plan(model, ctx=num_ctx)
        if plan.n_ctx < num_ctx:
            raise ContextUnavailable(model.name, num_ctx, plan.n_ctx)
        with self._lock:
            self._contexts[model.name] = num_ctx

    def plan(self, model: LocalModel, ctx: int | None = None) -> LoadPlan:
        """How the model would load now, with ``ctx`` tokens of context, else the one a client
        asked for, else the settings' (capped by what fits and what it was trained for)."""
        from dataclasses import replace

        from impetus_cli.runtime.tuning import plan_load

        with self._lock:
            ctx = ctx or self._contexts.get(model.name)
        info, budget = self.info(model), self.budget()
        key = (model.path, budget, ctx)
        with self._lock:
            known = self._plans.get(key)
        if known is None:
            settings = self.settings if ctx is None else replace(self.settings, ctx=ctx)
            draft = self.draft_for(model)
            known = plan_load(model, info, self.hardware, settings, budget, draft)
            with self._lock:
                self._plans[key] = known
        return known

    def draft_for(self, model: LocalModel) -> tuple[LocalModel, ModelInfo] | None:
        """The model that drafts for ``model`` (speculative decoding): the one named by
        ``--speculative MODEL`` or ``--draft MODEL``, or with ``--speculative draft`` the
        catalog's small sibling of its family when it is in the store; None for none, or when
        it would draft for itself. A draft model named but unknown is a ModelNotFound."""
        from impetus_cli.runtime import catalog, names
        from impetus_cli.runtime.engines.speculative import parse_mode

        s = self.settings
        if parse_mode(s.speculative) == "off":
            return None
        name = s.draft or (s.speculative if parse_mode(s.speculative) == "draft" else None)
        if name == "draft":  # the family's sibling, only when it is here
            try:
                name = catalog.draft_for(names.parse_ref(model.name))
                draft = self.store.get(name) if name else None
            except ImpetusError:
                draft = None
        else:
            draft = self.resolve(name) if name else None
        if draft is None or draft.path == model.path:
            return None
        return draft, self.info(draft)
