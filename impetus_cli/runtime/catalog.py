"""The built-in catalog (data/catalog.json): names people code with -> Hub repositories.

When the quantization is not named, ``resolve`` picks the best one whose estimated memory
(weights + KV cache at the default context) fits the budget, and says which and why.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from impetus_cli.errors import InsufficientMemory, InvalidModelName, ModelNotFound
from impetus_cli.runtime.types import Format, ModelRef

# Bits per weight of llama.cpp quantizations, for size estimates (GGUF files of 7-8B models).
BITS_PER_WEIGHT = {
    "Q2_K": 3.0,
    "Q3_K_S": 3.5,
    "Q3_K_M": 3.9,
    "Q3_K_L": 4.3,
    "Q4_0": 4.55,
    "Q4_K_S": 4.6,
    "Q4_K_M": 4.85,
    "Q5_K_S": 5.55,
    "Q5_K_M": 5.7,
    "Q6_K": 6.6,
    "Q8_0": 8.5,
    "F16": 16.0,
    "BF16": 16.0,
}
MLX_BITS = {"4bit": 4.5, "8bit": 8.5}  # group scales add about half a bit
# Quality order when several fit; Q4_K_M is the usual sweet spot, higher only with room to spare.
PREFERENCE = ("Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M")
HEADROOM = 1.5  # a higher-than-Q4_K_M quant must fit this many times over


@dataclass(frozen=True)
class PullTarget:
    name: str
    repo: str
    format: Format
    files: tuple[str, ...]  # exact GGUF filename, or glob patterns for an MLX directory
    quant: str | None
    size_bytes: int | None
    reason: str


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


def kv_bytes(size: dict[str, Any], ctx: int) -> int:
    return 2 * size["layers"] * size["kv_heads"] * size["head_dim"] * 2 * min(ctx, size["context"])


def estimate_weights(params_b: float, bits: float) -> int:
    return int(params_b * 1e9 * bits / 8)


def choose_quant(
    quants: list[str], params_b: float, kv: int, budget: int, ctx: int
) -> tuple[str, str]:
    """The best quantization that fits, and a sentence saying why."""

    def total(q: str) -> int:
        return estimate_weights(params_b, BITS_PER_WEIGHT.get(q, 4.85)) + kv

    def why(q: str, verdict: str) -> str:
        return (
            f"{q}: {estimate_weights(params_b, BITS_PER_WEIGHT.get(q, 4.85)) / 1e9:.1f} GB weights + "
            f"{kv / 1e9:.1f} GB KV cache at {ctx // 1024}k context {verdict} the {budget / 1e9:.1f} GB budget"
        )

    for q in PREFERENCE:
        if q not in quants:
            continue
        room = HEADROOM if PREFERENCE.index(q) < PREFERENCE.index("Q4_K_M") else 1.0
        if total(q) * room <= budget:
            return q, why(q, "fits" if room == 1.0 else "fits comfortably in")
    smallest = min(quants, key=lambda q: BITS_PER_WEIGHT.get(q, 99))
    raise InsufficientMemory(
        f"Even {why(smallest, 'exceeds')}.",
        "Pick a smaller size (e.g. a 1.5b or 3b model) or raise --memory-budget.",
    )


def resolve(ref: ModelRef, budget_bytes: int, ctx: int) -> PullTarget:
    """What to download for a catalog name on a machine with this budget."""
    if ref.kind != "catalog":
        raise InvalidModelName(f"{ref.raw} is not a catalog name.")
    family, size = _family(ref)
    label = size["size"]
    kv = kv_bytes(size, ctx)
    if ref.format == "mlx":
        if not family.get("mlx_repo"):
            raise ModelNotFound(
                f"No MLX build of {ref.name} in the catalog.",
                f"Use `impetus pull {ref.name}:{label}` (GGUF).",
            )
        bits = (ref.quant or "4bit").removesuffix("bit")
        if f"{bits}bit" not in MLX_BITS:
            raise InvalidModelName(f"MLX builds come in 4bit or 8bit, not {ref.quant}.")
        weights = estimate_weights(size["params_b"], MLX_BITS[f"{bits}bit"])
        return PullTarget(
            name=f"{ref.name}:{label}-mlx-{bits}bit",
            repo=_fill(family["mlx_repo"], label, bits=bits),
            format="mlx",
            files=("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"),
            quant=f"{bits}bit",
            size_bytes=weights,
            reason=f"MLX {bits}-bit build",
        )
    quants = family["quants"]
    if ref.quant:
        quant = ref.quant.upper()
        if quant not in BITS_PER_WEIGHT:
            raise InvalidModelName(
                f"Unknown quantization {ref.quant}.", f"Choose one of {', '.join(quants)}."
            )
        reason = f"{quant}: as asked"
    else:
        quant, reason = choose_quant(quants, size["params_b"], kv, budget_bytes, ctx)
    repo = _fill(size.get("gguf_repo") or family["gguf_repo"], label)
    file = _fill(size.get("gguf_file") or family["gguf_file"], label, quant)
    name = f"{ref.name}:{label}" if not ref.quant else f"{ref.name}:{label}-{ref.quant.lower()}"
    return PullTarget(
        name=name,
        repo=repo,
        format="gguf",
        files=(file,),
        quant=quant,
        size_bytes=estimate_weights(size["params_b"], BITS_PER_WEIGHT[quant]),
        reason=reason,
    )


def is_builtin(ref: ModelRef) -> bool:
    if ref.kind != "catalog" or ref.name not in _data()["families"]:
        return False
    size = _family(ref)[1]
    return (
        bool(size.get("builtin")) and ref.format in (None, "gguf") and ref.quant in (None, "q4_k_m")
    )


_GGUF_QUANT = re.compile(r"(?i)(i?q\d_[a-z0-9_]+?|q\d_\d|f16|bf16|f32)(?=[.\-]|$)")


def quant_of(filename: str) -> str | None:
    match = _GGUF_QUANT.search(filename.rsplit("/", 1)[-1].removesuffix(".gguf"))
    return match.group(1).upper() if match else None


def choose_gguf_file(
    files: dict[str, int], budget_bytes: int, kv: int, ctx: int
) -> tuple[str, str]:
    """For `hf:org/repo` without a quantization: pick among the repo's GGUF files by size."""
    by_quant = {quant_of(f): f for f in sorted(files) if quant_of(f) and "mmproj" not in f}
    candidates = [q for q in PREFERENCE if q in by_quant] or [q for q in by_quant if q]
    for q in candidates:
        size = files[by_quant[q]]
        room = (
            HEADROOM
            if q in PREFERENCE and PREFERENCE.index(q) < PREFERENCE.index("Q4_K_M")
            else 1.0
        )
        if (size + kv) * room <= budget_bytes:
            return (
                by_quant[q],
                f"{q}: {size / 1e9:.1f} GB + {kv / 1e9:.1f} GB KV at {ctx // 1024}k context fits the {budget_bytes / 1e9:.1f} GB budget",
            )
    if not files:
        raise ModelNotFound(
            "The repository holds no GGUF file.", "Name a GGUF repository, or an MLX one."
        )
    smallest = min(files, key=lambda f: files[f])
    if files[smallest] + kv > budget_bytes:
        raise InsufficientMemory(
            f"The smallest file, {smallest} ({files[smallest] / 1e9:.1f} GB), does not fit the "
            f"{budget_bytes / 1e9:.1f} GB budget.",
            "Pick a smaller model.",
        )
    return smallest, f"{smallest}: the smallest file in the repository"
