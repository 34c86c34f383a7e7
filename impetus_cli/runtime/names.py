"""Model references as users type them.

- ``name[:tag]`` from the catalog; the tag names size, format and/or quantization in any
  order, joined by ``-``: ``qwen2.5-coder:7b``, ``qwen2.5-coder:7b-q4_k_m``, ``codellama:gguf``,
  ``qwen2.5-coder:7b-mlx``, ``qwen2.5-coder:7b-mlx-8bit``.
- ``hf:org/repo[:quant or file]`` (also ``hf.co/org/repo``, ``huggingface.co/org/repo``).
- a local file or directory: a path that exists, or starts with ``/``, ``./``, ``~``, or ends
  with ``.gguf``.

Every spelling that names one model finds it: ``hf:org/repo:q8_0``, ``hf.co/org/repo:Q8_0`` and
``huggingface.co/org/repo:Q8_0`` are the same file, and a catalog tag's parts may come in any
order and case (``refers_to`` matches a reference against a listed model's facts).
"""

from __future__ import annotations

import re
from pathlib import Path

from impetus_cli.errors import InvalidModelName
from impetus_cli.runtime import quant as quants
from impetus_cli.runtime.types import LocalModel, ModelRef

SIZE = re.compile(r"^\d+(\.\d+)?[bmt]$")
REPO = re.compile(r"^[\w.-]+/[\w.-]+$")
HF_PREFIXES = ("hf:", "hf.co/", "huggingface.co/", "https://huggingface.co/")


def _is_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~"))
        or text.endswith(".gguf")
        or Path(text).expanduser().exists()
    )


def parse_ref(text: str) -> ModelRef:
    raw = text.strip()
    if not raw:
        raise InvalidModelName("Empty model name.", "Try `impetus pull qwen2.5-coder:7b`.")
    for prefix in HF_PREFIXES:
        if raw.lower().startswith(prefix):
            return _parse_hf(raw, raw[len(prefix) :])
    if _is_path(raw):
        return ModelRef(raw=raw, kind="path", name=raw, path=Path(raw).expanduser())
    name, _, tag = raw.lower().partition(":")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise InvalidModelName(
            f"{raw!r} is not a model name.", "Names look like qwen2.5-coder:7b or hf:org/repo."
        )
    size = fmt = quant = None
    for part in tag.split("-") if tag else []:
        if SIZE.match(part):
            size = part
        elif part in ("gguf", "mlx", "safetensors"):
            fmt = part
        elif quants.is_quant_tag(part):
            quant = part
        elif part == "latest":
            continue
        else:
            raise InvalidModelName(
                f"Unknown tag part {part!r} in {raw!r}.",
                "Tags combine a size (7b), a format (gguf, mlx) and a quantization (q4_k_m, 4bit).",
            )
    if quant and quant.endswith("bit") and fmt is None:
        fmt = "mlx"
    return ModelRef(raw=raw, kind="catalog", name=name, size=size, format=fmt, quant=quant)  # type: ignore[arg-type]


def _parse_hf(raw: str, rest: str) -> ModelRef:
    repo, _, extra = rest.partition(":")
    repo = repo.strip("/")
    if not REPO.match(repo):
        raise InvalidModelName(
            f"{raw!r} does not name a Hub repository.",
            "Use hf:org/repo, e.g. hf:Qwen/Qwen2.5-Coder-7B-Instruct-GGUF.",
        )
    if extra.lower().endswith(".gguf"):
        return ModelRef(raw=raw, kind="hf", name=repo, format="gguf", filename=extra)
    quant = extra.lower() or None
    if quant and not quants.is_quant_tag(quant):
        raise InvalidModelName(
            f"{extra!r} is neither a quantization nor a .gguf file.", "e.g. hf:org/repo:q4_k_m"
        )
    return ModelRef(raw=raw, kind="hf", name=repo, quant=quant)


def canonical_name(ref: ModelRef, quant: str | None = None, fmt: str | None = None) -> str:
    """The name a pulled model is listed and served under."""
    quant = (quant or ref.quant or "").lower() or None
    if ref.kind == "hf":
        suffix = ref.filename or (quant.upper() if quant else "")
        return f"hf.co/{ref.name}" + (f":{suffix}" if suffix else "")
    if ref.kind == "path":
        return str(ref.path)
    parts = [p for p in (ref.size, "mlx" if (fmt or ref.format) == "mlx" else None, quant) if p]
    return f"{ref.name}:{'-'.join(parts)}" if parts else ref.name


def _catalog_tag(model: LocalModel) -> ModelRef | None:
    """A listed model's name read as a catalog reference, if it is one."""
    try:
        ref = parse_ref(model.name)
    except InvalidModelName:
        return None  # ollama/..., lmstudio/... and imported names are matched exactly
    return ref if ref.kind == "catalog" else None


def refers_to(ref: ModelRef, model: LocalModel) -> bool:
    """Whether ``ref`` (as a user typed it) names ``model``: the same Hub repo and quantization
    or file for ``hf:`` references, the same name and agreeing tag parts for catalog names.
    Parts the reference leaves out match anything; the caller decides what several hits mean."""
    model_quant = quants.normalize(model.quantization)
    if ref.kind == "hf":
        if not model.repo or model.repo.casefold() != ref.name.casefold():
            return False
        if ref.filename:
            return ref.filename in (model.filename, model.path.name)
        return ref.quant is None or ref.quant == model_quant
    if ref.kind != "catalog":
        return False
    listed = _catalog_tag(model)
    if listed is None or listed.name != ref.name:
        return False
    fmt = "gguf" if model.format == "gguf" else "mlx"  # "safetensors" runs on mlx-lm too
    wanted = {"safetensors": "mlx"}.get(ref.format or "", ref.format)
    return (
        ref.size in (None, listed.size)
        and wanted in (None, fmt)
        and ref.quant in (None, model_quant, listed.quant)
    )
