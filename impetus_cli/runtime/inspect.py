"""Read a model's facts from its own files: GGUF metadata, or config.json for MLX/safetensors.

The GGUF reader here parses only the header (key/value metadata and tensor shapes) from a
memory map. The ``gguf`` package's GGUFReader decodes every vocabulary entry into numpy objects
and takes ~10 s on a 262k-token vocabulary; skipping those arrays takes milliseconds, which is
what `impetus show` and the planner need.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from pathlib import Path
from typing import Any

from impetus_cli.errors import CorruptModel, UnsupportedFormat
from impetus_cli.runtime.types import Format, ModelInfo

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
REFUSED = {
    ".onnx": "ONNX",
    ".mlmodel": "CoreML",
    ".mlpackage": "CoreML",
    ".bin": "PyTorch",
    ".pt": "PyTorch",
    ".pth": "PyTorch",
}
ADVICE = (
    "Impetus runs GGUF (llama.cpp) and MLX/safetensors (mlx-lm) models. Pull a GGUF build of the "
    "same model (e.g. `impetus pull hf:org/Model-GGUF`) or convert it with llama.cpp's "
    "convert_hf_to_gguf.py."
)


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


def detect_format(path: Path) -> Format:
    """GGUF file, or an MLX / safetensors directory; other formats refused with advice."""
    suffix = path.suffix.lower()
    if suffix in REFUSED:
        raise UnsupportedFormat(
            f"{path.name} is a {REFUSED[suffix]} model, which Impetus does not run.", ADVICE
        )
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(4) == GGUF_MAGIC:
                return "gguf"
        if suffix == ".gguf":
            raise CorruptModel(
                f"{path.name} is not a valid GGUF file (it does not start with 'GGUF').",
                "The download may be incomplete or damaged: pull it again.",
            )
        raise UnsupportedFormat(f"{path.name} is not a GGUF file.", ADVICE)
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if "config.json" in names and any(n.endswith(".safetensors") for n in names):
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            return (
                "mlx" if "quantization" in config or "mlx" in str(path).lower() else "safetensors"
            )
        for ext, kind in REFUSED.items():
            if any(n.endswith(ext) for n in names):
                raise UnsupportedFormat(
                    f"{path} holds a {kind} model, which Impetus does not run.", ADVICE
                )
        raise UnsupportedFormat(f"{path} holds no config.json + .safetensors weights.", ADVICE)
    raise UnsupportedFormat(f"{path} does not exist.", "Check the path, or `impetus list`.")


# Architectures whose every N-th layer attends globally and the others over a sliding window, as
# llama.cpp and mlx-lm build them (their GGUF files give the window, not the pattern).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3_text": 6, "cohere2": 4}


def _swa_layers(arch: str, n_layers: int, window: int, pattern: int | None = None) -> int:
    every = pattern or SWA_PATTERN.get(arch, 0)
    return n_layers - n_layers // every if window > 0 and every > 0 else 0


def inspect_model(path: Path) -> ModelInfo:
    path = Path(path).expanduser()
    fmt = detect_format(path)
    return _inspect_gguf(path) if fmt == "gguf" else _inspect_config_dir(path, fmt)


def _inspect_gguf(path: Path) -> ModelInfo:
    meta, tensors = read_gguf_header(path)
    arch = str(meta.get("general.architecture", "llama"))

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    n_heads = _first_int(key("attention.head_count", 1))
    embd = int(key("embedding_length", 0))
    n_kv = _first_int(key("attention.head_count_kv", n_heads))
    head_dim = int(key("attention.key_length", embd // max(n_heads, 1)))
    tokens = meta.get("tokenizer.ggml.tokens")
    shards = _split_shards(path, meta)
    for shard in shards[1:]:
        tensors = tensors + read_gguf_header(shard)[1]
    n_params = sum(_product(shape) for _, shape, _ in tensors)
    ftype = meta.get("general.file_type")
    quant = FILE_TYPES.get(int(ftype)) if ftype is not None else None
    n_layers = int(key("block_count", 0))
    window = int(key("attention.sliding_window", 0) or 0)
    return ModelInfo(
        path=path,
        format="gguf",
        architecture=arch,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        embedding_length=embd,
        context_length=int(key("context_length", 2048)),
        file_bytes=sum(p.stat().st_size for p in shards),
        n_params=n_params or None,
        quantization=quant or _dominant_type(tensors),
        vocab_size=tokens if isinstance(tokens, int) else (len(tokens) if tokens else None),
        chat_template=meta.get("tokenizer.chat_template"),
        name=meta.get("general.name"),
        bos_token=meta.get("tokenizer.ggml.bos_token"),
        eos_token=meta.get("tokenizer.ggml.eos_token"),
        sliding_window=window,
        swa_layers=_swa_layers(arch, n_layers, window),
        base_model=looks_base(
            meta.get("tokenizer.chat_template"),
            path.name,
            *(str(meta.get(f"general.{k}") or "") for k in ("name", "finetune", "basename")),
            *(str(t) for t in meta.get("general.tags") or () if isinstance(t, str)),
        ),
    )


# Names that say a model was tuned for chat: "-Instruct", "-it" (Gemma), "chat", "sft", ...
_TUNED = re.compile(r"(?i)(instruct|chat|(^|[-_. ])it($|[-_. ])|sft|dpo|rlhf|assistant|coder-?inst)")


def looks_base(template: str | None, *names: str) -> bool:
    """A pretrained (base) model: its files carry no chat template and none of its names has
    an instruct or chat tag. Such a model continues text; in a chat it rambles."""
    return not template and not any(_TUNED.search(n) for n in names if n)


_SHARD = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


def _split_shards(path: Path, meta: dict[str, Any]) -> list[Path]:
    """All files of a split GGUF (``x-00001-of-00003.gguf``), the first one first."""
    match = _SHARD.match(path.name)
    if not match or int(meta.get("split.count", 1)) <= 1:
        return [path]
    n = int(match["n"])
    shards = [path.with_name(f"{match['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise CorruptModel(
            f"{path.name} is one part of a split model; missing: {', '.join(missing)}.",
            "Pull the model again so that every part is present.",
        )
    return shards


def _dominant_type(tensors: list[tuple[str, list[int], int]]) -> str | None:
    """The ggml type holding most weights, when the file does not say its file type."""
    totals: dict[int, int] = {}
    for _, shape, ggml_type in tensors:
        if len(shape) >= 2:
            totals[ggml_type] = totals.get(ggml_type, 0) + _product(shape)
    if not totals:
        return None
    import gguf

    dominant = max(totals, key=lambda t: totals[t])
    try:
        return gguf.GGMLQuantizationType(dominant).name
    except ValueError:
        return f"type{dominant}"


def _first_int(value: Any) -> int:
    """Per-layer arrays (some architectures vary heads by layer): take the largest."""
    return int(max(value)) if isinstance(value, list) else int(value)


def _product(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def _inspect_config_dir(path: Path, fmt: Format) -> ModelInfo:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptModel(
            f"{path}/config.json is unreadable: {exc}", "Pull the model again."
        ) from exc
    text = config.get("text_config") or config
    n_heads = int(text.get("num_attention_heads", 1))
    embd = int(text.get("hidden_size", 0))
    quant = config.get("quantization") or {}
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    arch = str(text.get("model_type") or config.get("model_type") or "unknown")
    n_layers = int(text.get("num_hidden_layers", 0))
    window = int(text.get("sliding_window") or 0)
    kinds = text.get("layer_types")
    if isinstance(kinds, list) and window:
        swa_layers = sum(1 for k in kinds if k == "sliding_attention")
    else:
        swa_layers = _swa_layers(arch, n_layers, window, text.get("sliding_window_pattern"))
    return ModelInfo(
        path=path,
        format=fmt,
        architecture=arch,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(text.get("num_key_value_heads") or n_heads),
        head_dim=int(text.get("head_dim") or embd // max(n_heads, 1)),
        embedding_length=embd,
        context_length=int(text.get("max_position_embeddings", 2048)),
        file_bytes=weights,
        n_params=_safetensors_params(path, quant.get("bits")) or None,
        quantization=f"{quant['bits']}bit"
        if "bits" in quant
        else str(text.get("torch_dtype") or "") or None,
        vocab_size=text.get("vocab_size"),
        chat_template=_tokenizer_template(path),
        name=path.name,
        sliding_window=window,
        swa_layers=swa_layers,
        base_model=looks_base(_tokenizer_template(path), path.name, str(config.get("_name_or_path") or "")),
    )


def _safetensors_params(path: Path, bits: int | None) -> int:
    """Parameters from the safetensors headers (8-byte length + JSON), no weights read. MLX
    packs quantized weights into uint32 words (32/bits values each) beside scales and biases."""
    total = 0
    for file in sorted(path.glob("*.safetensors")):
        try:
            with file.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error) as exc:
            raise CorruptModel(f"{file} has an unreadable header: {exc}", "Pull it again.") from exc
        for name, entry in header.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            if bits and name.endswith((".scales", ".biases")):
                continue
            count = _product(entry.get("shape", []))
            total += count * 32 // int(bits) if bits and entry.get("dtype") == "U32" else count
    return total


def _tokenizer_template(path: Path) -> str | None:
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        file = path / name
        if not file.exists():
            continue
        if name.endswith(".jinja"):
            return file.read_text(encoding="utf-8")
        template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template
    return None
