"""inspect_model / detect_format on real files: the tiny GGUF, the real Gemma 3 270M, MLX-style
directories written here, and the formats we refuse."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from impetus_cli.errors import CorruptModel, UnsupportedFormat
from impetus_cli.runtime.inspect import detect_format, inspect_model
from tests.fixtures.tiny_models import write_tiny_gguf


def test_tiny_gguf_facts_come_from_its_metadata(tiny_gguf: Path) -> None:
    info = inspect_model(tiny_gguf)
    assert (info.format, info.architecture, info.name) == ("gguf", "llama", "tiny-llama-test")
    assert (info.n_layers, info.n_heads, info.n_kv_heads) == (2, 4, 2)
    assert (info.embedding_length, info.head_dim, info.context_length) == (64, 16, 4096)
    assert info.quantization == "F32" and info.file_bytes == tiny_gguf.stat().st_size
    assert (info.bos_token, info.eos_token) == ("<s>", "</s>")
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.vocab_size is not None and info.vocab_size > 256 + 3


def test_parameter_count_is_the_sum_of_tensor_sizes(tiny_gguf: Path) -> None:
    info = inspect_model(tiny_gguf)
    vocab, embd, ff, kv = info.vocab_size or 0, 64, 128, 2 * 16
    per_layer = embd + embd * embd * 2 + 2 * kv * embd + embd + 3 * ff * embd
    assert info.n_params == 2 * vocab * embd + embd + 2 * per_layer


def test_quantization_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "no-file-type.gguf", file_type=False)
    assert inspect_model(path).quantization == "F32"


def test_gemma_facts_include_key_length_head_dim_and_no_template(gemma_gguf: Path) -> None:
    info = inspect_model(gemma_gguf)
    assert (info.architecture, info.n_layers, info.n_kv_heads) == ("gemma3", 18, 1)
    # key_length (256) wins over embedding / heads (640 / 4 = 160).
    assert info.head_dim == 256 and info.embedding_length == 640
    assert info.quantization == "Q4_K_M" and info.vocab_size == 262144
    assert info.n_params is not None and 250e6 < info.n_params < 300e6
    assert info.chat_template is None and info.bos_token == "<bos>"


def test_a_truncated_gguf_header_is_a_corrupt_model(tiny_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:2000])
    with pytest.raises(CorruptModel, match="truncated"):
        inspect_model(broken)


def test_a_gguf_name_without_gguf_bytes_is_a_corrupt_model(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 not found</html>")
    with pytest.raises(CorruptModel) as err:
        detect_format(fake)
    assert err.value.hint and "pull it again" in err.value.hint


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.onnx", "ONNX"),
        ("pytorch_model.bin", "PyTorch"),
        ("model.pt", "PyTorch"),
        ("model.mlmodel", "CoreML"),
    ],
)
def test_other_formats_are_refused_with_what_to_use_instead(
    tmp_path: Path, name: str, kind: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(UnsupportedFormat, match=kind) as err:
        detect_format(path)
    assert err.value.hint and "GGUF" in err.value.hint


def test_a_pytorch_checkpoint_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x00")
    with pytest.raises(UnsupportedFormat, match="PyTorch"):
        detect_format(tmp_path)


def _safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * offset)


def _mlx_dir(root: Path, *, quantized: bool) -> Path:
    config = {
        "model_type": "qwen2",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 64,
        "max_position_embeddings": 8192,
        "vocab_size": 100,
    }
    if quantized:
        config["quantization"] = {"bits": 4, "group_size": 64}
        tensors = {
            "embed.weight": ("U32", [100, 8]),  # 64 values per row, 8 per uint32 word
            "embed.scales": ("F16", [100, 1]),
            "embed.biases": ("F16", [100, 1]),
        }
    else:
        tensors = {"embed.weight": ("F16", [100, 64])}
    (root / "config.json").write_text(json.dumps(config))
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    _safetensors(root / "model.safetensors", tensors)
    return root


def test_an_mlx_directory_reads_config_quantization_and_template(tmp_path: Path) -> None:
    info = inspect_model(_mlx_dir(tmp_path, quantized=True))
    assert (info.format, info.architecture, info.quantization) == ("mlx", "qwen2", "4bit")
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim) == (2, 4, 2, 16)
    assert info.context_length == 8192 and info.chat_template == "{{ messages }}"
    assert info.n_params == 100 * 64  # packed words unpacked; scales and biases not counted


def test_a_plain_safetensors_directory_counts_its_parameters(tmp_path: Path) -> None:
    info = inspect_model(_mlx_dir(tmp_path, quantized=False))
    assert info.format == "safetensors" and info.n_params == 100 * 64


def test_a_missing_path_says_so(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormat, match="does not exist"):
        detect_format(tmp_path / "nothing.gguf")
