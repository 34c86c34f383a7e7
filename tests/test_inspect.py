"""inspect_model / detect_format on real files: the tiny GGUF, the real Gemma 3 270M, MLX-style
directories written here, and the formats we refuse."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

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


def _header_gguf(
    path: Path, arch: str, keys: dict[str, Any], tensors: dict[str, list[int]]
) -> Path:
    """A GGUF file written by the gguf package with these ``<arch>.*`` keys and f32 tensors of
    these shapes (GGUF order: the fastest-varying dimension first, experts last)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in keys.items():
        if isinstance(value, list):
            writer.add_array(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(list(reversed(shape)), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_mixture_of_experts_reads_its_experts_and_active_parameters(tmp_path: Path) -> None:
    keys = {"block_count": 1, "embedding_length": 8, "attention.head_count": 2,
            "expert_count": 4, "expert_used_count": 1, "context_length": 4096}  # fmt: skip
    tensors = {
        "token_embd.weight": [8, 10],
        "blk.0.attn_q.weight": [8, 8],
        "blk.0.ffn_gate_inp.weight": [8, 4],
        "blk.0.ffn_up_exps.weight": [8, 16, 4],  # 4 experts of 8 x 16
        "blk.0.ffn_down_exps.weight": [16, 8, 4],
        "blk.0.ffn_up_shexp.weight": [8, 16],  # a shared expert: always read
    }
    info = inspect_model(_header_gguf(tmp_path / "moe.gguf", "qwen3moe", keys, tensors))
    experts = 2 * 8 * 16 * 4
    dense = 80 + 64 + 32 + 128
    assert (info.n_experts, info.n_experts_used) == (4, 1)
    assert info.n_params == dense + experts
    assert info.active_params == dense + experts // 4
    assert (info.recurrent_layers, info.recurrent_state_bytes, info.head_dim_v) == (0, 0, 0)


def test_a_hybrid_model_reads_its_recurrent_layers_and_state_size(tmp_path: Path) -> None:
    """Qwen3-Next style: every 4th layer attends, the others keep a delta-rule state whose size
    follows llama.cpp's: conv (d_conv - 1) x (d_inner + 2 groups x d_state), state d_state x d_inner."""
    keys = {"block_count": 8, "embedding_length": 16, "attention.head_count": 2,
            "attention.head_count_kv": 1, "attention.key_length": 32, "context_length": 8192,
            "full_attention_interval": 4, "ssm.conv_kernel": 4, "ssm.inner_size": 64,
            "ssm.state_size": 16, "ssm.group_count": 2}  # fmt: skip
    info = inspect_model(
        _header_gguf(tmp_path / "next.gguf", "qwen3next", keys, {"output.weight": [16, 4]})
    )
    per_layer = 3 * (64 + 2 * 2 * 16) + 16 * 64
    assert info.recurrent_layers == 6 and info.recurrent_state_bytes == 6 * per_layer * 4
    assert info.head_dim == 32


def test_per_layer_kv_heads_mark_the_recurrent_layers_of_a_mamba_hybrid(tmp_path: Path) -> None:
    keys = {"block_count": 4, "embedding_length": 16, "attention.head_count": 2,
            "attention.head_count_kv": [0, 2, 0, 0], "ssm.conv_kernel": 4,
            "ssm.inner_size": 32, "ssm.state_size": 8}  # fmt: skip
    info = inspect_model(
        _header_gguf(tmp_path / "hybrid.gguf", "granitehybrid", keys, {"output.weight": [16, 4]})
    )
    assert info.n_kv_heads == 2 and info.recurrent_layers == 3
    assert info.recurrent_state_bytes == 3 * (3 * 32 + 8 * 32) * 4


def test_latent_attention_keeps_its_value_head_size(tmp_path: Path) -> None:
    """DeepSeek V3 / Kimi K2 as llama.cpp caches them: one 576-wide K head, a 512-wide V head."""
    keys = {"block_count": 2, "embedding_length": 16, "attention.head_count": 4,
            "attention.head_count_kv": 1, "attention.key_length": 576,
            "attention.value_length": 512}  # fmt: skip
    info = inspect_model(
        _header_gguf(tmp_path / "mla.gguf", "deepseek2", keys, {"output.weight": [16, 4]})
    )
    assert (info.head_dim, info.head_dim_v, info.n_kv_heads) == (576, 512, 1)


def test_an_mlx_mixture_of_experts_counts_its_active_parameters(tmp_path: Path) -> None:
    config = {"model_type": "qwen3_moe", "num_hidden_layers": 1, "num_attention_heads": 2,
              "hidden_size": 8, "num_experts": 4, "num_experts_per_tok": 2}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    _safetensors(
        tmp_path / "model.safetensors",
        {
            "model.embed_tokens.weight": ("F16", [10, 8]),
            "model.layers.0.mlp.switch_mlp.up_proj.weight": ("F16", [4, 16, 8]),
        },
    )
    info = inspect_model(tmp_path)
    assert (info.n_experts, info.n_experts_used) == (4, 2)
    assert info.n_params == 80 + 512 and info.active_params == 80 + 256


def test_an_mlx_linear_attention_model_reads_its_state_size(tmp_path: Path) -> None:
    config = {"model_type": "qwen3_next", "num_hidden_layers": 4, "num_attention_heads": 2,
              "hidden_size": 8, "layer_types": ["linear_attention"] * 3 + ["full_attention"],
              "linear_conv_kernel_dim": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
              "linear_num_key_heads": 1, "linear_num_value_heads": 2}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    _safetensors(tmp_path / "model.safetensors", {"model.embed_tokens.weight": ("F16", [10, 8])})
    info = inspect_model(tmp_path)
    per_layer = 3 * (2 * 1 * 8 + 2 * 8) + 2 * 8 * 8
    assert info.recurrent_layers == 3 and info.recurrent_state_bytes == 3 * per_layer * 4


def test_a_split_gguf_is_one_model_and_a_missing_part_is_named(tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    first = write_tiny_gguf(tmp_path / "split" / "tiny.gguf", split_max_tensors=5)
    whole = inspect_model(write_tiny_gguf(tmp_path / "tiny.gguf"))
    info = inspect_model(first)
    parts = sorted(first.parent.iterdir())
    assert first.name == "tiny-00001-of-00005.gguf" and len(parts) == 5
    assert info.n_params == whole.n_params
    assert info.file_bytes == sum(p.stat().st_size for p in parts)
    parts[2].unlink()
    with pytest.raises(CorruptModel, match=r"missing: tiny-00003-of-00005\.gguf"):
        inspect_model(first)


def test_a_per_layer_sliding_window_pattern_counts_the_window_layers(tmp_path: Path) -> None:
    """Gemma 4 files list which layers slide (five of every six here), not a fixed pattern."""
    import gguf

    path = tmp_path / "gemma4.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma4")
    writer.add_uint32("gemma4.block_count", 12)
    writer.add_uint32("gemma4.attention.sliding_window", 1024)
    writer.add_array("gemma4.attention.sliding_window_pattern", ([True] * 5 + [False]) * 2)
    writer.add_array("gemma4.attention.head_count_kv", ([8] * 5 + [2]) * 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = inspect_model(path)
    assert (info.sliding_window, info.swa_layers, info.n_kv_heads) == (1024, 10, 8)
