"""Read a model's facts from its own files: GGUF metadata, or config.json for MLX/safetensors.

The GGUF header itself is read by ``runtime/gguf.py``; this module turns it (or config.json and
the safetensors headers) into a ModelInfo: architecture, attention shape, sliding window,
experts and active parameters, recurrent layers and their state.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from impetus_cli.errors import CorruptModel, UnsupportedFormat
from impetus_cli.runtime.gguf import (
    FILE_TYPES,
    GGUF_MAGIC,
    STATE_ELEMENT_BYTES,
    active_params,
    dominant_type,
    product,
    read_gguf_header,
    recurrent_facts,
    shard_paths,
)
from impetus_cli.runtime.types import Format, ModelInfo

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


def _gguf_swa_layers(meta: dict[str, Any], arch: str, n_layers: int, window: int) -> int:
    """Sliding-window layers: counted from a per-layer ``attention.sliding_window_pattern``
    array when the file has one (Gemma 4), else from the architecture's known pattern."""
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if window > 0 and isinstance(pattern, list):
        return sum(1 for is_sliding in pattern if is_sliding)
    return _swa_layers(arch, n_layers, window)


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
    head_dim_v = int(key("attention.value_length", head_dim))
    tokens = meta.get("tokenizer.ggml.tokens")
    shards = shard_paths(path, meta)
    for shard in shards[1:]:
        tensors = tensors + read_gguf_header(shard)[1]
    n_params = sum(product(shape) for _, shape, _ in tensors)
    ftype = meta.get("general.file_type")
    quant = FILE_TYPES.get(int(ftype)) if ftype is not None else None
    n_layers = int(key("block_count", 0))
    window = int(key("attention.sliding_window", 0) or 0)
    n_experts, n_used = int(key("expert_count", 0) or 0), int(key("expert_used_count", 0) or 0)
    recurrent_layers, state_bytes = recurrent_facts(meta, arch, n_layers)
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
        quantization=quant or dominant_type(tensors),
        vocab_size=tokens if isinstance(tokens, int) else (len(tokens) if tokens else None),
        chat_template=meta.get("tokenizer.chat_template"),
        name=meta.get("general.name"),
        bos_token=meta.get("tokenizer.ggml.bos_token"),
        eos_token=meta.get("tokenizer.ggml.eos_token"),
        sliding_window=window,
        swa_layers=_gguf_swa_layers(meta, arch, n_layers, window),
        base_model=looks_base(
            meta.get("tokenizer.chat_template"),
            path.name,
            *(str(meta.get(f"general.{k}") or "") for k in ("name", "finetune", "basename")),
            *(str(t) for t in meta.get("general.tags") or () if isinstance(t, str)),
        ),
        n_experts=n_experts,
        n_experts_used=n_used,
        active_params=active_params(tensors, n_experts, n_used),
        recurrent_layers=recurrent_layers,
        recurrent_state_bytes=state_bytes,
        head_dim_v=head_dim_v if head_dim_v != head_dim else 0,
    )


# Names that say a model was tuned for chat: "-Instruct", "-it" (Gemma), "chat", "sft", ...
_TUNED = re.compile(
    r"(?i)(instruct|chat|(^|[-_. ])it($|[-_. ])|sft|dpo|rlhf|assistant|coder-?inst)"
)


def looks_base(template: str | None, *names: str) -> bool:
    """A pretrained (base) model: its files carry no chat template and none of its names has
    an instruct or chat tag. Such a model continues text; in a chat it rambles."""
    return not template and not any(_TUNED.search(n) for n in names if n)


def _first_int(value: Any) -> int:
    """Per-layer arrays (some architectures vary heads by layer): take the largest."""
    return int(max(value)) if isinstance(value, list) else int(value)


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
    arch = str(text.get("model_type") or config.get("model_type") or "unknown")
    n_layers = int(text.get("num_hidden_layers", 0))
    window = int(text.get("sliding_window") or 0)
    kinds = text.get("layer_types")
    if isinstance(kinds, list) and window:
        swa_layers = sum(1 for k in kinds if k == "sliding_attention")
    else:
        swa_layers = _swa_layers(arch, n_layers, window, text.get("sliding_window_pattern"))
    n_params, expert_params = _safetensors_params(path, quant.get("bits"))
    n_experts, n_used = config_experts(text)
    recurrent_layers, state_bytes = config_recurrent(text)
    template = _tokenizer_template(path)
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
        file_bytes=sum(p.stat().st_size for p in path.glob("*.safetensors")),
        n_params=n_params or None,
        quantization=f"{quant['bits']}bit"
        if "bits" in quant
        else str(text.get("torch_dtype") or "") or None,
        vocab_size=text.get("vocab_size"),
        chat_template=template,
        name=path.name,
        sliding_window=window,
        swa_layers=swa_layers,
        base_model=looks_base(template, path.name, str(config.get("_name_or_path") or "")),
        n_experts=n_experts,
        n_experts_used=n_used,
        active_params=n_params - expert_params + expert_params * n_used // n_experts
        if expert_params and n_experts and n_used
        else None,
        recurrent_layers=recurrent_layers,
        recurrent_state_bytes=state_bytes,
    )


def config_experts(config: dict[str, Any]) -> tuple[int, int]:
    """(routed experts per MoE layer, experts each token uses) under the names the families'
    config.json files use; (0, 0) for a dense model."""
    total = next((config[k] for k in _EXPERTS if config.get(k)), 0)
    used = next((config[k] for k in _EXPERTS_USED if config.get(k)), 0)
    return int(total), int(used)


_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_EXPERTS_USED = ("num_experts_per_tok", "experts_per_token", "moe_topk")


def config_recurrent(config: dict[str, Any]) -> tuple[int, int]:
    """(linear-attention layers, their state bytes per sequence) of a Qwen3-Next-style config
    (``layer_types`` with "linear_attention", or ``full_attention_interval``; gated delta-rule
    heads ``linear_*``): per layer a conv state
    of (kernel - 1) x (2 x key heads x key size + value heads x value size) and a state of
    value heads x key size x value size, in f32 as llama.cpp keeps them. (0, 0) otherwise."""
    kinds, interval = config.get("layer_types"), int(config.get("full_attention_interval") or 0)
    if isinstance(kinds, list):
        layers = sum(1 for k in kinds if k == "linear_attention")
    else:  # every interval-th layer attends, the others are linear
        n_layers = int(config.get("num_hidden_layers", 0))
        layers = (
            n_layers - n_layers // interval
            if interval and "linear_num_value_heads" in config
            else 0
        )
    if not layers:
        return 0, 0
    k_heads, k_dim = (
        int(config.get("linear_num_key_heads", 0)),
        int(config.get("linear_key_head_dim", 0)),
    )
    v_heads, v_dim = (
        int(config.get("linear_num_value_heads", 0)),
        int(config.get("linear_value_head_dim", 0)),
    )
    kernel = int(config.get("linear_conv_kernel_dim", 0))
    conv = max(kernel - 1, 0) * (2 * k_heads * k_dim + v_heads * v_dim)
    per_layer = conv + v_heads * k_dim * v_dim
    return layers, layers * per_layer * STATE_ELEMENT_BYTES


def _safetensors_params(path: Path, bits: int | None) -> tuple[int, int]:
    """(parameters, of which routed experts') from the safetensors headers (8-byte length +
    JSON), no weights read. MLX packs quantized weights into uint32 words (32/bits values each)
    beside scales and biases; mlx-lm stacks routed experts in ``switch_mlp`` / ``experts``."""
    total = experts = 0
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
            count = product(entry.get("shape", []))
            count = count * 32 // int(bits) if bits and entry.get("dtype") == "U32" else count
            total += count
            experts += count if (".switch_mlp." in name or ".experts." in name) else 0
    return total, experts


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
