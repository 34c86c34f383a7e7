"""Names, the catalog's quantization choice, the store and discovery of other tools' models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from impetus_cli.errors import InsufficientMemory, InvalidModelName, ModelNotFound
from impetus_cli.runtime import catalog
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.fs import atomic_write_json
from impetus_cli.runtime.names import canonical_name, parse_ref
from impetus_cli.runtime.store import Store
from impetus_cli.runtime.types import LocalModel

GB = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "kind", "name", "size", "fmt", "quant"),
    [
        ("qwen2.5-coder:7b", "catalog", "qwen2.5-coder", "7b", None, None),
        ("qwen2.5-coder:7b-q4_k_m", "catalog", "qwen2.5-coder", "7b", None, "q4_k_m"),
        ("qwen2.5-coder:7b-mlx", "catalog", "qwen2.5-coder", "7b", "mlx", None),
        ("codellama:gguf", "catalog", "codellama", None, "gguf", None),
        ("gemma3:270m", "catalog", "gemma3", "270m", None, None),
        (
            "hf:Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M",
            "hf",
            "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF",
            None,
            None,
            "q4_k_m",
        ),
        ("hf.co/bartowski/x-GGUF", "hf", "bartowski/x-GGUF", None, None, None),
        ("./models/x.gguf", "path", "./models/x.gguf", None, None, None),
    ],
)
def test_references_parse(
    text: str, kind: str, name: str, size: str | None, fmt: str | None, quant: str | None
) -> None:
    ref = parse_ref(text)
    assert (ref.kind, ref.name, ref.size, ref.format, ref.quant) == (kind, name, size, fmt, quant)


def test_hf_reference_with_a_file_and_bad_names() -> None:
    assert parse_ref("hf:org/repo:model-Q8_0.gguf").filename == "model-Q8_0.gguf"
    for bad in ("", "hf:justarepo", "qwen:7b-purple", "Bad Name!"):
        with pytest.raises(InvalidModelName):
            parse_ref(bad)


def test_canonical_names() -> None:
    assert canonical_name(parse_ref("qwen2.5-coder:7b-q4_k_m")) == "qwen2.5-coder:7b-q4_k_m"
    assert canonical_name(parse_ref("hf:org/repo"), quant="q4_k_m") == "hf.co/org/repo:Q4_K_M"


@pytest.mark.parametrize(
    ("budget_gb", "quant"), [(6, "Q3_K_M"), (8, "Q4_K_M"), (12, "Q5_K_M"), (16, "Q6_K")]
)
def test_quantization_is_the_best_that_fits_the_budget(budget_gb: float, quant: str) -> None:
    target = catalog.resolve(parse_ref("qwen2.5-coder:7b"), int(budget_gb * GB), 32768)
    assert target.quant == quant and quant in target.reason and "budget" in target.reason
    assert target.files == (f"Qwen2.5-Coder-7B-Instruct-{quant}.gguf",)
    assert target.repo == "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF"


def test_nothing_fits_is_a_clear_error() -> None:
    with pytest.raises(InsufficientMemory, match=r"exceeds the 8\.0 GB budget"):
        catalog.resolve(parse_ref("qwen2.5-coder:32b"), 8 * GB, 32768)


def test_unknown_names_get_suggestions() -> None:
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve(parse_ref("qwen-coder:7b"), 16 * GB, 32768)
    assert "qwen2.5-coder" in info.value.suggestions
    with pytest.raises(ModelNotFound, match="has no size 9b"):
        catalog.resolve(parse_ref("qwen2.5-coder:9b"), 16 * GB, 32768)


def test_mlx_builds_and_every_catalog_entry_resolves() -> None:
    mlx = catalog.resolve(parse_ref("qwen2.5-coder:7b-mlx"), 16 * GB, 32768)
    assert mlx.format == "mlx" and mlx.repo == "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"
    for name in catalog.names():
        target = catalog.resolve(parse_ref(name), 10_000 * GB, 8192)
        assert (
            target.repo.count("/") == 1 and target.files[0].endswith(".gguf") and target.size_bytes
        )


def test_manifests_are_written_atomically_and_survive_junk(
    impetus_home: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    store = Store(settings)
    (tmp_path / "x.gguf").write_bytes(b"G")
    model = LocalModel(
        name="x:1b", format="gguf", path=tmp_path / "x.gguf", origin="impetus", size_bytes=1
    )
    store.add(model)
    (settings.manifests_dir / "junk.json").write_text("{half a file")
    assert [m.name for m in store.manifests()] == ["x:1b"]
    assert not list(settings.manifests_dir.glob(".*.tmp"))
    store.touch("x:1b")
    assert store.get("x:1b").last_used is not None


def test_other_tools_models_are_discovered_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings()
    # Ollama: a manifest naming a GGUF blob
    blob = settings.ollama_models / "blobs" / "sha256-abc"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"GGUF" + b"\0" * 10)
    manifest = (
        settings.ollama_models
        / "manifests"
        / "registry.ollama.ai"
        / "library"
        / "qwen2.5-coder"
        / "7b"
    )
    manifest.parent.mkdir(parents=True)
    atomic_write_json(
        manifest,
        {"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:abc"}]},
    )
    # LM Studio: publisher/repo/file.gguf
    lms = settings.lmstudio_models / "lmstudio-community" / "Qwen-GGUF" / "Qwen-Q4_K_M.gguf"
    lms.parent.mkdir(parents=True)
    lms.write_bytes(b"GGUF")
    # HF cache: models--org--repo/snapshots/<rev>/file.gguf
    snap = (
        Path(json.dumps(None) and str(tmp_path / "hf-cache"))
        / "models--org--repo"
        / "snapshots"
        / "abc"
    )
    snap.mkdir(parents=True)
    (snap / "repo-Q8_0.gguf").write_bytes(b"GGUF")
    names = {m.name: m for m in Store(settings).list()}
    assert names["ollama/qwen2.5-coder:7b"].origin == "ollama"
    assert names["lmstudio/lmstudio-community/Qwen-Q4_K_M"].quantization == "Q4_K_M"
    assert names["hf.co/org/repo:Q8_0"].origin == "hf-cache"
    with pytest.raises(Exception, match="never deletes another tool's files"):
        Store(settings).remove("ollama/qwen2.5-coder:7b")
    assert blob.exists()


@pytest.mark.parametrize(
    ("filename", "found"),
    [
        ("Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("Meta-Llama-3-8B-Instruct.Q8_0.gguf", "Q8_0"),
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("Qwen3-Coder-30B-A3B-Instruct-UD-Q4_K_XL-00001-of-00002.gguf", "Q4_K_XL"),
        ("Q4_K_M/DeepSeek-V3-Q4_K_M-00003-of-00009.gguf", "Q4_K_M"),
        ("phi-4-mini-IQ4_XS.gguf", "IQ4_XS"),
        ("model-bf16.gguf", "BF16"),
        ("qwen2.5-coder-7b.gguf", None),  # "qwen2" is not a quantization
    ],
)
def test_one_quantization_pattern_reads_every_file_name(filename: str, found: str | None) -> None:
    from impetus_cli.runtime import quant

    assert quant.from_filename(filename) == found


def test_split_sets_are_named_from_any_part() -> None:
    from impetus_cli.runtime import quant

    assert quant.split_set("q/M-Q4_K_M-00002-of-00003.gguf") == [
        "q/M-Q4_K_M-00001-of-00003.gguf",
        "q/M-Q4_K_M-00002-of-00003.gguf",
        "q/M-Q4_K_M-00003-of-00003.gguf",
    ]
    assert quant.split_set("M-Q4_K_M.gguf") == ["M-Q4_K_M.gguf"]
    assert quant.split_part("M-00004-of-00003.gguf") is None  # not a real part number
