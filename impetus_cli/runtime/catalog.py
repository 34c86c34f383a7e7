"""The built-in catalog (data/catalog.json): names people code with -> Hub files and model facts.

Each size of a family carries the model's own facts (layers, KV heads, head size, experts,
total and active parameters, trained context, sliding window, recurrent layers) and the GGUF
files per quantization with the sizes the Hub lists, MLX builds where they exist, and where each
came from. Older entries give file-name patterns instead; their sizes are estimated from the
parameter count and the quantization's bits per weight.

When the quantization is not named, ``resolve`` picks one. Memory comes from the file (every
parameter: a mixture of experts keeps its idle experts in memory too) plus the KV cache and any
recurrent state; decode speed comes from the active parameters and the chip's bandwidth. Q4_K_M
whenever it fits; a better one only with room and speed to spare; a smaller one only when
memory forces it.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from impetus_cli.errors import InsufficientMemory, InvalidModelName, ModelNotFound
from impetus_cli.runtime import quant as quantization
from impetus_cli.runtime.hardware import expected_speeds
from impetus_cli.runtime.inspect import config_recurrent
from impetus_cli.runtime.quant import HEADROOM, PREFERENCE
from impetus_cli.runtime.tuning import kv_bytes as plan_kv_bytes
from impetus_cli.runtime.types import Format, HardwareProfile, ModelInfo, ModelRef

# Bits per weight of llama.cpp quantizations, for size estimates (GGUF files of 7-8B models).
BITS_PER_WEIGHT = {
    "TQ1_0": 1.7,
    "IQ1_S": 1.6,
    "Q2_K": 3.0,
    "Q2_K_XL": 3.0,
    "Q3_K_S": 3.5,
    "Q3_K_M": 3.9,
    "Q3_K_L": 4.3,
    "IQ4_XS": 4.3,
    "Q4_0": 4.55,
    "Q4_K_S": 4.6,
    "MXFP4": 4.25,
    "Q4_K_M": 4.85,
    "Q5_K_S": 5.55,
    "Q5_K_M": 5.7,
    "Q6_K": 6.6,
    "Q8_0": 8.5,
    "F16": 16.0,
    "BF16": 16.0,
}
MLX_BITS = {"4bit": 4.5, "8bit": 8.5}  # group scales add about half a bit
# A higher quantization than Q4_K_M (quant.PREFERENCE) must also keep decoding at least this
# fast (tok/s): the slowest chip's target in APPLE_SILICON.md.
SPEED_FLOOR = 15.0
MLX_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")


@dataclass(frozen=True)
class PullTarget:
    """What to download for a catalog name, and why."""

    name: str
    repo: str
    format: Format
    files: tuple[str, ...]  # GGUF file(s) (every part of a split file), or MLX glob patterns
    quant: str | None
    size_bytes: int | None
    reason: str
    info: ModelInfo | None = None  # the model's facts, with this file's size
    size_listed: bool = False  # size_bytes is the size the Hub lists (else an estimate)
    expected_tps: float | None = None  # decode speed expected on the given machine
    sources: tuple[str, ...] = ()  # where the facts and sizes came from


@dataclass(frozen=True)
class _Option:
    """One downloadable build of a catalog size."""

    quant: str
    repo: str
    files: tuple[str, ...]
    size_bytes: int
    listed: bool


@functools.cache
def _data() -> dict[str, Any]:
    text = (
        resources.files("impetus_cli.runtime")
        .joinpath("data/catalog.json")
        .read_text(encoding="utf-8")
    )
    return json.loads(text)


def names() -> list[str]:
    return [
        f"{fam}:{s['size']}" for fam, entry in _data()["families"].items() for s in entry["sizes"]
    ]


def suggest(name: str, n: int = 3) -> list[str]:
    families = list(_data()["families"])
    close = difflib.get_close_matches(name.split(":")[0], families, n=n, cutoff=0.5)
    return close or difflib.get_close_matches(name, names(), n=n, cutoff=0.4)


def draft_for(ref: ModelRef) -> str | None:
    """The family's small sibling with the same vocabulary that drafts for its larger sizes
    (speculative decoding), or None: none, or ``ref`` is that sibling."""
    family = _data()["families"].get(ref.name) if ref.kind == "catalog" else None
    draft = family.get("draft") if family else None
    size = ref.size or (family or {}).get("default_size")
    return None if not draft or draft.split(":")[-1] == size else str(draft)


def knows(ref: ModelRef) -> bool:
    """Whether a parsed name is a catalog family (its size may still be wrong)."""
    return ref.kind == "catalog" and ref.name in _data()["families"]


def _family(ref: ModelRef) -> tuple[dict[str, Any], dict[str, Any]]:
    families = _data()["families"]
    if ref.name not in families:
        hints = suggest(ref.name)
        raise ModelNotFound(
            f"{ref.name!r} is not in the catalog.",
            (f"Did you mean {', '.join(hints)}? " if hints else "")
            + "Or pull any repository with hf:org/repo.",
            suggestions=tuple(hints),
        )
    family = families[ref.name]
    label = ref.size or family["default_size"]
    size = next((s for s in family["sizes"] if s["size"] == label), None)
    if size is None:
        sizes = ", ".join(s["size"] for s in family["sizes"])
        raise ModelNotFound(f"{ref.name} has no size {label}.", f"Sizes: {sizes}.")
    return family, size


def _fill(pattern: str, size: str, quant: str = "", bits: str = "") -> str:
    upper = size[:-1] + size[-1].upper()
    return (
        pattern.replace("{S}", upper)
        .replace("{s}", size)
        .replace("{Q}", quant)
        .replace("{B}", bits)
    )


def facts(size: dict[str, Any]) -> dict[str, Any]:
    """A size's model facts: its ``facts`` object, or (older entries) the size itself."""
    return size.get("facts") or size


def model_info(
    fact: dict[str, Any], path: Path, fmt: Format, file_bytes: int, quant: str | None
) -> ModelInfo:
    """The catalog's facts of a model as the planner reads a file's: a ModelInfo."""
    layers = int(fact["layers"])
    recurrent, state = config_recurrent({**fact, "num_hidden_layers": layers})
    active = fact.get("active_b")
    return ModelInfo(
        path=path,
        format=fmt,
        architecture=str(fact.get("architecture", "unknown")),
        n_layers=layers,
        n_heads=int(fact.get("heads", fact["kv_heads"])),
        n_kv_heads=int(fact["kv_heads"]),
        head_dim=int(fact["head_dim"]),
        embedding_length=int(fact.get("hidden", 0)),
        context_length=int(fact["context"]),
        file_bytes=file_bytes,
        n_params=int(fact["params_b"] * 1e9),
        quantization=quant,
        vocab_size=fact.get("vocab"),
        sliding_window=int(fact.get("sliding_window", 0)),
        swa_layers=int(fact.get("swa_layers", 0)),
        n_experts=int(fact.get("experts", 0)),
        n_experts_used=int(fact.get("experts_used", 0)),
        active_params=int(active * 1e9) if active else None,
        recurrent_layers=recurrent,
        recurrent_state_bytes=state,
        head_dim_v=int(fact.get("head_dim_v", 0)),
    )


def estimate_weights(params_b: float, bits: float) -> int:
    return int(params_b * 1e9 * bits / 8)


def _options(family: dict[str, Any], size: dict[str, Any]) -> dict[str, _Option]:
    """The GGUF builds of a size by quantization: listed files with the Hub's sizes, or (older
    entries, and files whose size was not found) sizes estimated from the parameter count."""
    params = facts(size)["params_b"]
    gguf = size.get("gguf")
    if gguf:
        return {
            quant: _Option(
                quant,
                f.get("repo") or gguf["repo"],
                tuple(quantization.split_set(f["file"])),
                int(f["bytes"])
                if f.get("bytes")
                else estimate_weights(params, bits_per_weight(quant)),
                bool(f.get("bytes")),
            )
            for quant, f in gguf["files"].items()
        }
    label = size["size"]
    repo = _fill(size.get("gguf_repo") or family["gguf_repo"], label)
    pattern = size.get("gguf_file") or family["gguf_file"]
    return {
        q: _Option(q, repo, (_fill(pattern, label, q),), estimate_weights(params, bits), False)
        for q in family["quants"]
        if (bits := BITS_PER_WEIGHT.get(q)) is not None
    }


def bits_per_weight(quant: str) -> float:
    """Bits per weight of a quantization (unsloth's dynamic "UD-" builds as their base type)."""
    base = quant.removeprefix("UD-")
    return BITS_PER_WEIGHT.get(base, BITS_PER_WEIGHT.get(base.replace("_XL", "_M"), 4.85))


def _candidates(options: dict[str, _Option]) -> list[str]:
    """Quantizations in the order to try: the better-than-Q4_K_M ones of PREFERENCE (which must
    leave room and speed to spare), then Q4_K_M-class and smaller ones, best first; a larger
    one (Q8_0, F16) only when nothing else is listed."""
    q4 = BITS_PER_WEIGHT["Q4_K_M"]
    upgrades = [q for q in PREFERENCE if q in options and bits_per_weight(q) > q4]
    rest = sorted((q for q in options if q not in upgrades), key=bits_per_weight, reverse=True)
    smaller = [q for q in rest if bits_per_weight(q) <= q4]
    return upgrades + smaller if upgrades or smaller else rest


def _speed(info: ModelInfo, hw: HardwareProfile | None) -> float | None:
    """Decode tokens/s expected on ``hw`` (a short context), from the active parameters."""
    if hw is None:
        return None
    tg = expected_speeds(hw, info.file_bytes, 0, info.n_params, None, info.active_params)
    return tg.get("tg")


@dataclass(frozen=True)
class _Sizing:
    """What choosing a quantization weighs: the facts, the context, the budget, the machine."""

    fact: dict[str, Any]
    ctx: int
    budget: int
    hw: HardwareProfile | None

    def info(self, option: _Option) -> ModelInfo:
        path = Path(option.repo) / option.files[0]
        return model_info(self.fact, path, "gguf", option.size_bytes, option.quant)

    def kv(self, info: ModelInfo) -> int:
        return plan_kv_bytes(info, min(self.ctx, info.context_length))

    def why(self, option: _Option, verdict: str) -> str:
        info = self.info(option)
        tps = _speed(info, self.hw)
        return (
            f"{describe_params(info)}: {option.quant} {option.size_bytes / 1e9:.1f} GB + "
            f"{self.kv(info) / 1e9:.1f} GB KV cache at {self.ctx // 1024}k context {verdict} "
            f"the {self.budget / 1e9:.1f} GB budget"
            + (f"; ~{tps:.0f} tok/s expected on {_machine(self.hw)}" if tps else "")
        )


def describe_params(info: ModelInfo) -> str:
    """ "30.5B total, 3.3B active" for a mixture of experts, "7.6B parameters" otherwise."""
    total = (info.n_params or 0) / 1e9
    if info.active_params:
        return f"{total:.1f}B total, {info.active_params / 1e9:.1f}B active"
    return f"{total:.1f}B parameters"


def _machine(hw: HardwareProfile | None) -> str:
    return (hw.variant or hw.cpu_name) if hw else "this machine"


def choose(options: dict[str, _Option], sizing: _Sizing) -> tuple[_Option, str]:
    """The best build that fits, and a sentence saying why. Above Q4_K_M only with HEADROOM
    times the memory and the decode speed staying above SPEED_FLOOR; below it only when
    nothing better fits."""
    q4 = BITS_PER_WEIGHT["Q4_K_M"]
    for quant in _candidates(options):
        option = options[quant]
        info = sizing.info(option)
        total = option.size_bytes + sizing.kv(info)
        upgrade = quant in PREFERENCE and bits_per_weight(quant) > q4
        if total * (HEADROOM if upgrade else 1.0) > sizing.budget:
            continue
        tps = _speed(info, sizing.hw)
        if upgrade and tps is not None and tps < SPEED_FLOOR:
            continue
        return option, sizing.why(option, "fits comfortably in" if upgrade else "fits")
    smallest = min(options.values(), key=lambda o: o.size_bytes)
    raise InsufficientMemory(
        f"Even {sizing.why(smallest, 'exceeds')}.",
        "Pick a smaller size (e.g. a 1.5b or 3b model) or raise --memory-budget.",
    )


def resolve(
    ref: ModelRef, budget_bytes: int, ctx: int, hardware: HardwareProfile | None = None
) -> PullTarget:
    """What to download for a catalog name on a machine with this budget (and, when given, this
    chip: the expected decode speed joins the reason and the choice)."""
    if ref.kind != "catalog":
        raise InvalidModelName(f"{ref.raw} is not a catalog name.")
    family, size = _family(ref)
    if ref.format == "mlx":
        return _resolve_mlx(ref, family, size, hardware)
    options = _options(family, size)
    sizing = _Sizing(facts(size), ctx, budget_bytes, hardware)
    if ref.quant:
        quant = ref.quant.upper()
        if quant not in options:
            raise InvalidModelName(
                f"{ref.name}:{size['size']} has no {quant} build in the catalog.",
                f"Choose one of {', '.join(options)}.",
            )
        option, reason = options[quant], f"{quant}: as asked"
    else:
        option, reason = choose(options, sizing)
    label = size["size"]
    info = sizing.info(option)
    return PullTarget(
        name=f"{ref.name}:{label}" + (f"-{ref.quant.lower()}" if ref.quant else ""),
        repo=option.repo,
        format="gguf",
        files=option.files,
        quant=option.quant,
        size_bytes=option.size_bytes,
        reason=reason,
        info=info,
        size_listed=option.listed,
        expected_tps=_speed(info, hardware),
        sources=_sources(size),
    )


def _resolve_mlx(
    ref: ModelRef, family: dict[str, Any], size: dict[str, Any], hw: HardwareProfile | None
) -> PullTarget:
    label, mlx = size["size"], size.get("mlx") or {}
    pattern = mlx.get("repo") or family.get("mlx_repo")
    if not pattern:
        raise ModelNotFound(
            f"No MLX build of {ref.name}:{label} in the catalog.",
            f"Use `impetus pull {ref.name}:{label}` (GGUF).",
        )
    bits = (ref.quant or "4bit").removesuffix("bit")
    if f"{bits}bit" not in MLX_BITS or f"{bits}bit" not in mlx.get("bits", MLX_BITS):
        raise InvalidModelName(f"MLX builds come in 4bit or 8bit, not {ref.quant}.")
    listed = (mlx.get("bytes") or {}).get(f"{bits}bit")
    weights = (
        int(listed) if listed else estimate_weights(facts(size)["params_b"], MLX_BITS[f"{bits}bit"])
    )
    repo = _fill(pattern, label, bits=bits)
    info = model_info(facts(size), Path(repo), "mlx", weights, f"{bits}bit")
    return PullTarget(
        name=f"{ref.name}:{label}-mlx-{bits}bit",
        repo=repo,
        format="mlx",
        files=MLX_FILES,
        quant=f"{bits}bit",
        size_bytes=weights,
        reason=f"{describe_params(info)}: MLX {bits}-bit build",
        info=info,
        size_listed=bool(listed),
        expected_tps=_speed(info, hw),
        sources=_sources(size),
    )


def _sources(size: dict[str, Any]) -> tuple[str, ...]:
    found = [facts(size).get("source"), (size.get("gguf") or {}).get("source")]
    found.append((size.get("mlx") or {}).get("source"))
    return tuple(s for s in found if s)


def is_builtin(ref: ModelRef) -> bool:
    if ref.kind != "catalog" or ref.name not in _data()["families"]:
        return False
    size = _family(ref)[1]
    return (
        bool(size.get("builtin")) and ref.format in (None, "gguf") and ref.quant in (None, "q4_k_m")
    )
