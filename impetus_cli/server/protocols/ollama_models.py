"""Ollama's descriptions of models: /api/tags entries, /api/ps entries and /api/show.

Clients size their context from these: Continue reads ``num_ctx`` in ``parameters``, Roo Code
the first ``*context_length`` key of ``model_info``, others ``<arch>.context_length``. So
``parameters`` and the first such key hold the context this server gives the model (loaded,
else planned), and ``<arch>.context_length`` the trained maximum, as Ollama reports it.
Continue decides whether a model can fill in the middle by looking for ``.Suffix`` in
``template``, others by ``insert`` in ``capabilities``: both say the same.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.loaded import Loaded
from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.types import LoadPlan, LocalModel, ModelInfo
from impetus_cli.server.protocols.ollama_render import timestamp

# Fill-in-the-middle tokens as model families spell them; llama.cpp accepts these spellings.
FIM_GROUPS = (  # prefix, suffix, middle; "▁<PRE>" is CodeLlama's, "<|code_*|>" GLM-4.5's
    (
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
    ),
    (
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
    ),
    (
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
    ),
)
# Architectures that only embed (Ollama lists them with the "embedding" capability alone).
EMBEDDING_ARCHS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "xlm-roberta"}
)
FOREVER = timedelta(days=292 * 365)  # how far Ollama puts expires_at for keep_alive -1


@dataclass(frozen=True)
class Facts:
    """What the manager knows of one model: its file's facts and plan (None when they cannot
    be read, e.g. a file gone or too large for this machine) and its entry when loaded."""

    model: LocalModel
    info: ModelInfo | None
    plan: LoadPlan | None
    loaded: Loaded | None

    @property
    def n_ctx(self) -> int | None:
        """The context this server gives the model: as loaded, else as it would load now."""
        return self.plan.n_ctx if self.plan else None


def facts(manager: ModelManager, model: LocalModel) -> Facts:
    """The model's facts (blocking: it may read the file's header and plan it)."""
    loaded = next((e for e in manager.loaded() if e.model.name == model.name), None)
    if loaded is not None:
        return Facts(model, loaded.info, loaded.plan, loaded)
    try:
        info = manager.info(model)
    except (ImpetusError, OSError):
        return Facts(model, None, None, None)
    try:
        plan: LoadPlan | None = manager.plan_model(model)
    except (ImpetusError, OSError):
        plan = None  # still listed, without a context
    return Facts(model, info, plan, None)


def parameter_size(n_params: int | None) -> str:
    """Ollama's spelling: "8.0B", "268.10M"."""
    if not n_params:
        return ""
    return f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.2f}M"


def details(f: Facts) -> dict[str, Any]:
    arch = f.info.architecture if f.info else ""
    quant = f.model.quantization or (f.info.quantization if f.info else None)
    return {
        "parent_model": "",
        "format": f.model.format,
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": parameter_size(f.info.n_params if f.info else None),
        "quantization_level": quant or "",
    }


def digest(model: LocalModel) -> str:
    """The file's sha256 when the pull recorded it, else a stable id of the file."""
    if model.sha256:
        return model.sha256
    return hashlib.sha256(f"{model.path}:{model.size_bytes}".encode()).hexdigest()


def _modified(model: LocalModel) -> str:
    if model.created:
        return timestamp(model.created)
    try:
        return timestamp(model.path.stat().st_mtime)
    except OSError:
        return timestamp(0)


def tag_entry(f: Facts) -> dict[str, Any]:
    return {
        "name": f.model.name,
        "model": f.model.name,
        "modified_at": _modified(f.model),
        "size": f.model.size_bytes,
        "digest": digest(f.model),
        "details": details(f),
    }


def _expires(entry: Loaded) -> str:
    now = datetime.now(UTC)
    if entry.pinned or entry.keep_alive < 0:
        moment = now + FOREVER
    else:
        idle_since = now if entry.in_flight else datetime.fromtimestamp(entry.last_used, UTC)
        moment = idle_since + timedelta(seconds=entry.keep_alive)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ps_entry(entry: Loaded) -> dict[str, Any]:
    f = Facts(entry.model, entry.info, entry.plan, entry)
    size = entry.plan.total_bytes
    return {
        **tag_entry(f),
        "size": size,
        "expires_at": _expires(entry),
        "size_vram": size if entry.plan.n_gpu_layers > 0 else 0,
        "context_length": entry.plan.n_ctx,
    }


# -- /api/show -----------------------------------------------------------------------------

_fim_cache: dict[tuple[Path, float], tuple[str, str, str] | None] = {}
_fim_lock = threading.Lock()


def _mlx_vocabulary_has(folder: Path, texts: Collection[str]) -> frozenset[str]:
    try:
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    added = {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, Mapping)}
    vocab = (data.get("model") or {}).get("vocab") or {}
    return frozenset(t for t in texts if t in added or (isinstance(vocab, Mapping) and t in vocab))


def _fim_from_files(model: LocalModel) -> tuple[str, str, str] | None:
    from impetus_cli.runtime.gguf import vocabulary_has

    spellings = [t for group in FIM_GROUPS for t in group]
    if model.path.is_dir():  # MLX / safetensors: the tokenizer's own file
        found = _mlx_vocabulary_has(model.path, spellings)
    else:
        found = vocabulary_has(model.path, spellings)
    pre, suf, mid = (next((t for t in group if t in found), "") for group in FIM_GROUPS)
    return (pre, suf, mid) if pre and suf and mid else None


def fim_tokens(f: Facts) -> tuple[str, str, str] | None:
    """The model's fill-in-the-middle tokens (prefix, suffix, middle), or None. A loaded
    engine says; otherwise the vocabulary in the file is read once per file version."""
    if f.loaded is not None:
        special = f.loaded.engine.special_text
        return (
            (special.fim_prefix, special.fim_suffix, special.fim_middle)
            if special.has_fim
            else None
        )
    try:
        key = (f.model.path, f.model.path.stat().st_mtime)
    except OSError:
        return None
    with _fim_lock:
        if key in _fim_cache:
            return _fim_cache[key]
    found = _fim_from_files(f.model)
    with _fim_lock:
        _fim_cache[key] = found
    return found


def chat_template(info: ModelInfo) -> str:
    """The template prompts are rendered with: the model's own, else our stand-in for it."""
    from impetus_cli.runtime.templating_builtin import BUILTIN, template_for

    return info.chat_template or BUILTIN[template_for(info.architecture, info.bos_token or "")]


def capabilities(info: ModelInfo, fim: bool) -> list[str]:
    """What Ollama's clients look for: completion, tools, insert (fill-in-the-middle),
    thinking; embedding alone for embedding models. No model here reads images."""
    from impetus_cli.runtime.replies import reasoning_tags, tool_dialect

    if info.architecture.lower() in EMBEDDING_ARCHS:
        return ["embedding"]
    found = ["completion"]
    if not info.base_model:  # a chat model: native tool template or our tool prompt
        found.append("tools")
    if fim:
        found.append("insert")
    template, arch = info.chat_template, info.architecture
    if reasoning_tags(template, arch) or tool_dialect(template, arch) == "harmony":
        found.append("thinking")
    return found


def template_text(info: ModelInfo, fim: tuple[str, str, str] | None) -> str:
    """The chat template (Jinja, as the model ships it); a fill-in-the-middle model gets
    Ollama's ``.Suffix`` branch first, which is how Continue detects that it can."""
    chat = chat_template(info)
    if fim is None:
        return chat
    pre, suf, mid = fim
    fill = "{{- if .Suffix }}" + pre + "{{ .Prompt }}" + suf + "{{ .Suffix }}" + mid + "{{- end }}"
    return f"{fill}\n{chat}"


def parameters_text(n_ctx: int | None, stops: Collection[str]) -> str:
    """Ollama's ``parameters``: one ``key value`` per line, strings as JSON (Continue parses
    each line with a pattern; a line it cannot read stops its parsing)."""
    lines = [f"num_ctx {n_ctx}"] if n_ctx else []
    lines += [f"stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    return "\n".join(lines)


def model_info(f: Facts, info: ModelInfo) -> dict[str, Any]:
    arch = info.architecture
    out: dict[str, Any] = {"general.architecture": arch}
    if info.n_params:
        out["general.parameter_count"] = info.n_params
    if f.n_ctx:
        # first of the *context_length keys: clients that take the first one get ours
        out["impetus.context_length"] = f.n_ctx
    out["impetus.loaded"] = f.loaded is not None
    out[f"{arch}.context_length"] = info.context_length
    out[f"{arch}.embedding_length"] = info.embedding_length
    out[f"{arch}.block_count"] = info.n_layers
    out[f"{arch}.attention.head_count"] = info.n_heads
    out[f"{arch}.attention.head_count_kv"] = info.n_kv_heads
    if info.vocab_size:
        out[f"{arch}.vocab_size"] = info.vocab_size
    return out


def show_body(f: Facts) -> dict[str, Any]:
    """/api/show for a model whose file could be read (blocking: FIM may read the vocabulary)."""
    from impetus_cli.runtime.stops import stop_strings_for

    info = f.info
    if info is None:
        raise ImpetusError(f"{f.model.name}: its file cannot be read.", "Check `impetus doctor`.")
    fim = fim_tokens(f)
    stops = stop_strings_for(info.architecture, info.chat_template)
    parameters = parameters_text(f.n_ctx, stops)
    modelfile = "\n".join(
        ["# Modelfile generated by impetus", f"FROM {f.model.path}"]
        + [f"PARAMETER {p}" for p in parameters.splitlines()]
    )
    return {
        "license": "",
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template_text(info, fim),
        "details": details(f),
        "model_info": model_info(f, info),
        "capabilities": capabilities(info, fim is not None),
        "modified_at": _modified(f.model),
    }
