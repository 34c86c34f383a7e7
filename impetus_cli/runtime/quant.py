"""What model file names and tags say: the quantization, and the parts of a split GGUF.

One pattern for quantizations serves the whole program: names typed by users
(``qwen2.5-coder:7b-q4_k_m``, ``hf:org/repo:Q8_0``), GGUF file names on the Hub and on disk
(``Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf``, ``gpt-oss-20b-MXFP4.gguf``,
``Qwen3-Coder-30B-A3B-Instruct-UD-Q4_K_XL.gguf``) and other tools' files.

Split GGUFs (llama.cpp's ``gguf-split``) are named ``<stem>-00001-of-00003.gguf``; llama.cpp
loads the whole set when given the first part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from impetus_cli.errors import InsufficientMemory, ModelNotFound

# llama.cpp's quantization names: Q4_K_M, Q8_0, IQ4_XS, TQ1_0, Q4_0_4_4, Q4_K_XL (unsloth's
# dynamic builds), MXFP4 (gpt-oss), and unquantized F16 / BF16 / F32.
_GGUF = r"i?q\d(?:_[a-z0-9]+)*|tq\d_\d|mxfp4|bf16|f16|f32"
# In a file name: a whole token, between separators (so "qwen2" or "xq4_0" never match).
_IN_FILE = re.compile(rf"(?i)(?<![a-z0-9])({_GGUF})(?=[.\-]|$)")
# A tag a user types: a GGUF quantization, or an MLX build's bit width ("4bit").
_TAG = re.compile(rf"(?i)^(?:{_GGUF}|\d+bit)$")
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def is_quant_tag(text: str) -> bool:
    """True for ``q4_k_m``, ``Q8_0``, ``iq4_xs``, ``mxfp4``, ``f16``, ``4bit`` (any case)."""
    return bool(_TAG.match(text))


def normalize(quant: str | None) -> str | None:
    """The form names compare on (lower case), or None."""
    return quant.lower() if quant else None


def from_filename(filename: str) -> str | None:
    """The quantization a GGUF file name states, upper case (``Q4_K_M``), or None."""
    name = PurePosixPath(filename).name
    split = _SPLIT.match(name)
    stem = split["stem"] if split else name.removesuffix(".gguf").removesuffix(".GGUF")
    match = _IN_FILE.search(stem)
    return match.group(1).upper() if match else None


def without_quant(stem: str) -> str:
    """``Qwen2.5-Coder-7B-Instruct-Q4_K_M`` -> ``Qwen2.5-Coder-7B-Instruct``."""
    match = _IN_FILE.search(stem)
    if not match:
        return stem
    return (stem[: match.start()] + stem[match.end() :]).strip("-._") or stem


@dataclass(frozen=True)
class SplitPart:
    """One file of a split GGUF: ``stem`` and its place ``index`` of ``count`` (from 1)."""

    stem: str
    index: int
    count: int

    def names(self, directory: str = "") -> list[str]:
        """Every part's file name, the first first (prefixed with ``directory/`` if given)."""
        prefix = f"{directory}/" if directory else ""
        numbers = range(1, self.count + 1)
        return [f"{prefix}{self.stem}-{i:05d}-of-{self.count:05d}.gguf" for i in numbers]


def split_part(filename: str) -> SplitPart | None:
    """The split-GGUF part a file name names, or None for a whole file."""
    match = _SPLIT.match(PurePosixPath(filename).name)
    if not match or int(match["count"]) < 2 or not 1 <= int(match["index"]) <= int(match["count"]):
        return None
    return SplitPart(match["stem"], int(match["index"]), int(match["count"]))


def split_set(filename: str) -> list[str]:
    """All files of the split set ``filename`` belongs to (same directory), the first first;
    ``[filename]`` for a whole file."""
    part = split_part(filename)
    if part is None:
        return [filename]
    directory = str(PurePosixPath(filename).parent)
    return part.names("" if directory == "." else directory)


# The quantizations chosen for a model, best first: a higher-than-Q4_K_M one only where it
# fits this many times over (room for the context to grow), Q3_K_M when nothing else fits.
PREFERENCE = ("Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M")
HEADROOM = 1.5


def choose_gguf_file(
    files: dict[str, int], budget_bytes: int, kv: int, ctx: int
) -> tuple[str, str]:
    """For `hf:org/repo` without a quantization: pick among the repo's GGUF files by size."""
    by_quant = {
        from_filename(f): f for f in sorted(files) if from_filename(f) and "mmproj" not in f
    }
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
