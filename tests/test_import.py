"""`impetus import PATH [--name NAME] [--copy]`: a model from elsewhere, by name, everywhere."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from impetus_cli.errors import ImpetusError, UnsupportedFormat
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.importer import default_name, import_model
from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.store import Store
from tests.fixtures.cli import run_cli
from tests.fixtures.servers import server_settings, start_server
from tests.fixtures.tiny_models import write_tiny_gguf


@pytest.fixture
def finetune(tmp_path: Path, tiny_gguf: Path) -> Path:
    """A user's own file, outside every store: my-coder-Q8_0.gguf."""
    path = tmp_path / "downloads" / "My-Coder-7B-Q8_0.gguf"
    path.parent.mkdir()
    shutil.copy(tiny_gguf, path)
    return path


def _listed(name: str) -> dict[str, object] | None:
    result = run_cli("list", "--json")
    assert result.returncode == 0, result.stderr
    return next((m for m in json.loads(result.stdout) if m["name"] == name), None)


def test_import_registers_in_place_and_rm_only_forgets(finetune: Path) -> None:
    result = run_cli("import", str(finetune))
    assert result.returncode == 0, result.stderr
    assert "my-coder-7b:q8_0" in result.stdout and "served from" in result.stdout
    entry = _listed("my-coder-7b:q8_0")
    assert entry is not None and entry["origin"] == "imported" and entry["quantization"] == "Q8_0"
    assert entry["path"] == str(finetune)
    shown = run_cli("show", "my-coder-7b:q8_0", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["architecture"] == "llama"
    chat = run_cli("chat", "my-coder-7b:q8_0", "--max-tokens", "4", "--ctx", "512", input="hi")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    removed = run_cli("rm", "my-coder-7b:q8_0", "-y")
    assert removed.returncode == 0 and "nothing deleted" in removed.stdout
    assert finetune.exists() and _listed("my-coder-7b:q8_0") is None


def test_import_copy_owns_the_copy_and_rm_deletes_it(finetune: Path, impetus_home: Path) -> None:
    result = run_cli("import", str(finetune), "--name", "mine", "--copy", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    copy = Path(str(data["path"]))
    assert data["copied"] and copy.read_bytes() == finetune.read_bytes()
    assert impetus_home / "models" in copy.parents
    assert run_cli("rm", "mine", "-y").returncode == 0
    assert not copy.exists() and not (impetus_home / "models" / "mine").exists()
    assert finetune.exists()


@pytest.fixture
def split_model(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "split"
    folder.mkdir()
    write_tiny_gguf(folder / "Big-Model-Q4_K_M.gguf", split_max_tensors=8)
    return sorted(folder.iterdir())


def test_a_split_gguf_imports_as_one_model_and_is_served(split_model: list[Path]) -> None:
    pytest.importorskip("llama_cpp")
    notes: list[str] = []
    model = import_model(str(split_model[1]), load_settings(), say=notes.append)  # any part
    assert model.path == split_model[0] and "first part" in notes[0]
    assert model.name == "big-model:q4_k_m"
    assert model.size_bytes == sum(p.stat().st_size for p in split_model)
    settings = server_settings()
    manager = ModelManager(settings, allow_paths=False)
    try:
        with start_server(manager, settings) as url:
            from openai import OpenAI

            client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            assert "big-model:q4_k_m" in [m.id for m in client.models.list().data]
            reply = client.chat.completions.create(
                model="big-model:q4_k_m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert reply.choices[0].message.content is not None
    finally:
        manager.close()


def test_a_split_gguf_with_a_missing_part_is_refused(split_model: list[Path]) -> None:
    split_model[2].unlink()
    result = run_cli("import", str(split_model[0]))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Big-Model-Q4_K_M-00003-of-00003.gguf" in result.stderr
    assert Store(load_settings()).manifests() == []


def test_an_mlx_directory_imports_under_its_name(tiny_mlx_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "Tiny-MLX-4bit"
    shutil.copytree(tiny_mlx_dir, folder)
    model = import_model(str(folder), load_settings())
    assert model.name == "tiny-mlx-4bit" and model.format in ("mlx", "safetensors")
    assert Store(load_settings()).get("tiny-mlx-4bit").path == folder
    assert Store(load_settings()).remove("tiny-mlx-4bit") == [] and folder.exists()


@pytest.fixture
def lmstudio_file(tiny_gguf: Path) -> Iterator[Path]:
    path = load_settings().lmstudio_models / "pub" / "Repo-GGUF" / "Long-Publisher-Name-Q8_0.gguf"
    path.parent.mkdir(parents=True)
    shutil.copy(tiny_gguf, path)
    yield path


def test_another_tools_file_can_get_a_short_name(lmstudio_file: Path) -> None:
    settings = load_settings()
    with pytest.raises(ImpetusError, match="already available as lmstudio/"):
        import_model(str(lmstudio_file), settings)  # no name of our own: nothing to gain
    import_model(str(lmstudio_file), settings, name="coder")
    names = [m.name for m in Store(settings).list()]
    assert "coder" in names and not any(n.startswith("lmstudio/") for n in names)
    Store(settings).remove("coder")
    assert lmstudio_file.exists()  # LM Studio's file is never ours


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gemma3:270m", "is taken"),
        ("hf:org/repo", "starts like a Hub"),
        ("../escape", "cannot name a model"),
        ("x.gguf", "cannot name a model"),
    ],
)
def test_names_that_would_clash_or_confuse_are_refused(
    finetune: Path, name: str, message: str
) -> None:
    if name == "gemma3:270m" and Store(load_settings()).list() == []:
        pytest.skip("the built-in model is not installed")
    with pytest.raises(ImpetusError, match=message):
        import_model(str(finetune), load_settings(), name=name)
    assert Store(load_settings()).manifests() == []


def test_the_same_file_twice_and_unusable_paths_are_clear_errors(
    finetune: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    import_model(str(finetune), settings, name="first")
    with pytest.raises(ImpetusError, match="already available as first"):
        import_model(str(finetune), settings, name="second")
    with pytest.raises(ImpetusError, match="does not exist"):
        import_model(str(tmp_path / "nothing.gguf"), settings)
    with pytest.raises(UnsupportedFormat, match="directory of GGUF files"):
        import_model(str(finetune.parent), settings)


def test_default_names_read_the_file_name() -> None:
    assert default_name(Path("Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf"), "gguf") == (
        "qwen2.5-coder-7b-instruct:q4_k_m"
    )
    assert default_name(Path("x-UD-Q4_K_XL-00001-of-00002.gguf"), "gguf") == "x-ud:q4_k_xl"
    assert default_name(Path("finetune.gguf"), "gguf") == "finetune"
