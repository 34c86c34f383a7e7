"""GGUF files: the header (key/value metadata and tensor shapes) and the parts of split files.

Only the header is parsed, from a memory map. The ``gguf`` package's GGUFReader decodes every
vocabulary entry into numpy objects, which takes seconds on a 262k-token vocabulary; skipping
those arrays is what `impetus show`, the planner and discovery need.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Collection
from pathlib import Path
from typing import Any

from impetus_cli.errors import CorruptModel
from impetus_cli.runtime import quant

GGUF_MAGIC = b"GGUF"
# GGUF value types -> struct format of a scalar; 8 = string, 9 = array.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
# llama.cpp's `general.file_type` (enum llama_ftype) -> the name people use.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


class _Cursor:
    """Sequential little-endian reads over a buffer."""

    def __init__(self, buf: Any):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]

    def value(self, vtype: int, keep_arrays: bool) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise CorruptModel(f"unknown GGUF value type {vtype}")
        item_type, count = self.scalar("I"), self.scalar("Q")
        if item_type in _SCALARS:
            size = struct.calcsize(_SCALARS[item_type])
            items = (
                list(struct.unpack_from(f"<{count}{_SCALARS[item_type]}", self.buf, self.pos))
                if keep_arrays
                else count
            )
            self.pos += size * count
            return items
        if item_type == _STRING and not keep_arrays:
            for _ in range(count):
                self.skip_string()
            return count
        return [self.value(item_type, keep_arrays) for _ in range(count)]


def read_gguf_header(path: Path) -> tuple[dict[str, Any], list[tuple[str, list[int], int]]]:
    """Metadata (the tokenizer's big arrays replaced by their length) and tensor
    (name, shape, ggml type) entries. The strings of the BOS and EOS tokens are read from the
    token list and put under ``tokenizer.ggml.bos_token`` / ``tokenizer.ggml.eos_token``."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != GGUF_MAGIC:
                raise CorruptModel(f"{path} is not a GGUF file (bad magic).", "Pull it again.")
            cur = _Cursor(buf)
            cur.pos = 4
            version, n_tensors, n_kv = cur.scalar("I"), cur.scalar("Q"), cur.scalar("Q")
            if version < 2:
                raise CorruptModel(
                    f"{path}: GGUF version {version} is too old.", "Pull a newer file."
                )
            meta: dict[str, Any] = {}
            tokens_at = -1
            for _ in range(n_kv):
                key, vtype = cur.string(), cur.scalar("I")
                if key == "tokenizer.ggml.tokens":
                    tokens_at = cur.pos
                small = key.endswith(("chat_template", "architecture")) or not key.startswith(
                    "tokenizer.ggml."
                )
                meta[key] = cur.value(vtype, keep_arrays=small)
            tensors = []
            for _ in range(n_tensors):
                name, n_dims = cur.string(), cur.scalar("I")
                shape = [cur.scalar("Q") for _ in range(n_dims)]
                ggml_type, _offset = cur.scalar("I"), cur.scalar("Q")
                tensors.append((name, shape, ggml_type))
            if tokens_at >= 0:
                meta.update(_special_strings(buf, tokens_at, meta))
            return meta, tensors
    except (struct.error, ValueError, OSError) as exc:
        raise CorruptModel(
            f"{path} is truncated or not a GGUF file ({exc}).", "Pull it again."
        ) from exc


def _special_strings(buf: Any, tokens_at: int, meta: dict[str, Any]) -> dict[str, str]:
    """Walk the token list (an array of strings at ``tokens_at``) up to the BOS/EOS ids."""
    wanted = {
        f"tokenizer.ggml.{name}_token": meta[f"tokenizer.ggml.{name}_token_id"]
        for name in ("bos", "eos")
        if isinstance(meta.get(f"tokenizer.ggml.{name}_token_id"), int)
    }
    cur = _Cursor(buf)
    cur.pos = tokens_at
    if cur.scalar("I") != _STRING or not wanted:
        return {}
    count, ids = cur.scalar("Q"), set(wanted.values())
    found: dict[str, str] = {}
    for index in range(min(count, max(ids) + 1)):
        if index in ids:
            text = cur.string()
            found.update({key: text for key, i in wanted.items() if i == index})
        else:
            cur.skip_string()
    return found


Tensor = tuple[str, list[int], int]  # (name, shape, ggml type) as the header lists it


def shard_paths(path: Path, meta: dict[str, Any]) -> list[Path]:
    """All files of a split GGUF (``x-00001-of-00003.gguf``), the first one first; a missing
    part is a CorruptModel naming it."""
    if int(meta.get("split.count", 1)) <= 1 or quant.split_part(path.name) is None:
        return [path]
    shards = [path.with_name(name) for name in quant.split_set(path.name)]
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise CorruptModel(
            f"{path.name} is one part of a split model; missing: {', '.join(missing)}.",
            "Pull the model again so that every part is present.",
        )
    return shards


def product(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def dominant_type(tensors: list[Tensor]) -> str | None:
    """The ggml type holding most weights, when the file does not say its file type."""
    totals: dict[int, int] = {}
    for _, shape, ggml_type in tensors:
        if len(shape) >= 2:
            totals[ggml_type] = totals.get(ggml_type, 0) + product(shape)
    if not totals:
        return None
    import gguf

    dominant = max(totals, key=lambda t: totals[t])
    try:
        return gguf.GGMLQuantizationType(dominant).name
    except ValueError:
        return f"type{dominant}"


def active_params(tensors: list[Tensor], n_experts: int, n_used: int) -> int | None:
    """Parameters one token reads in a mixture-of-experts file: everything but the routed
    experts' tensors (llama.cpp names them ``*_exps``, the expert index last in the shape),
    plus ``n_used`` of ``n_experts`` of those. None when the file has no routed experts."""
    if n_experts <= 0 or n_used <= 0:
        return None
    experts = sum(product(s) for name, s, _ in tensors if "_exps." in name or "_exps_" in name)
    if not experts:
        return None
    total = sum(product(s) for _, s, _ in tensors)
    return total - experts + experts * n_used // n_experts


# Bytes per element of llama.cpp's recurrent state (conv and SSM/delta-rule state are f32).
STATE_ELEMENT_BYTES = 4


def recurrent_facts(meta: dict[str, Any], arch: str, n_layers: int) -> tuple[int, int]:
    """(layers with a recurrent state, that state's bytes per sequence) from the ``ssm.*`` keys,
    as llama.cpp sizes it: a conv state of (d_conv - 1) x (d_inner + 2 x groups x d_state) and
    an SSM / delta-rule state of d_state x d_inner per layer. Which layers are recurrent:
    ``full_attention_interval`` (Qwen3-Next: every N-th layer attends), else the per-layer
    ``attention.head_count_kv`` zeros (Jamba, Granite hybrids, Nemotron-H), else all layers
    (Mamba). (0, 0) for a model without recurrent layers."""

    def key(name: str) -> int:
        value = meta.get(f"{arch}.{name}", 0)
        return int(value) if isinstance(value, int | float) else 0

    d_conv, d_inner, d_state = key("ssm.conv_kernel"), key("ssm.inner_size"), key("ssm.state_size")
    if not (d_inner and d_state):
        return 0, 0
    groups = key("ssm.group_count")
    per_layer = max(d_conv - 1, 0) * (d_inner + 2 * groups * d_state) + d_state * d_inner
    interval = key("full_attention_interval")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    if interval > 0:
        layers = n_layers - n_layers // interval
    elif isinstance(kv_heads, list):
        layers = sum(1 for heads in kv_heads if int(heads) == 0)
    else:
        layers = n_layers
    return layers, layers * per_layer * STATE_ELEMENT_BYTES


def vocabulary_has(path: Path, texts: Collection[str]) -> frozenset[str]:
    """Which of ``texts`` are tokens of a GGUF file's vocabulary. The token list is walked in
    place: only strings of a wanted length are read (a 262k-token list costs no allocation)."""
    wanted = {t.encode(): t for t in texts}
    lengths = {len(b) for b in wanted}
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != GGUF_MAGIC:
                return frozenset()
            cur = _Cursor(buf)
            cur.pos = 8  # magic, version
            _n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")
            for _ in range(n_kv):
                key, vtype = cur.string(), cur.scalar("I")
                if key != "tokenizer.ggml.tokens":
                    cur.value(vtype, keep_arrays=False)
                    continue
                if vtype != _ARRAY or cur.scalar("I") != _STRING:
                    return frozenset()
                found = set()
                for _ in range(cur.scalar("Q")):
                    n = struct.unpack_from("<Q", buf, cur.pos)[0]
                    if (
                        n in lengths
                        and (raw := bytes(buf[cur.pos + 8 : cur.pos + 8 + n])) in wanted
                    ):
                        found.add(wanted[raw])
                    cur.pos += 8 + n
                return frozenset(found)
    except (struct.error, ValueError, OSError):
        pass  # not a readable GGUF: it has none of them, as far as anyone can tell
    return frozenset()
