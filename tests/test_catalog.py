"""The catalog as data and as plans: every entry cites its sources, listed sizes agree with the
model's parameters, and `impetus pull NAME --dry-run` / `impetus show NAME` plan memory from the
file (every parameter) plus the KV cache and recurrent state, speed from the active parameters,
on captured Mac profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from impetus_cli.cli import app
from impetus_cli.errors import InsufficientMemory, InvalidModelName
from impetus_cli.runtime import catalog, hardware
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.names import parse_ref
from impetus_cli.runtime.types import HardwareProfile

DATA = Path(__file__).parent / "data"
GB = 1_000_000_000
RAW = json.loads(
    (Path(catalog.__file__).parent / "data" / "catalog.json").read_text(encoding="utf-8")
)
# Sizes written with a "facts" object follow the sourcing rule (the older flat entries predate it).
NEW = [
    (family, size)
    for family, entry in RAW["families"].items()
    for size in entry["sizes"]
    if "facts" in size
]


def mac(key: str) -> HardwareProfile:
    return hardware.parse_macos(
        (DATA / "macos" / f"{key}.sysctl.txt").read_text(),
        (DATA / "macos" / f"{key}.system_profiler.json").read_text(),
    )


def dry_run(
    monkeypatch: pytest.MonkeyPatch, profile: str, *argv: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`impetus pull NAME --dry-run --json` (or any argv) on a captured Mac, parsed."""
    monkeypatch.setattr(hardware, "detect", lambda: mac(profile))
    result = CliRunner().invoke(app, list(argv), env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.output)


def independent_cache(facts: dict[str, Any], ctx: int, parallel: int) -> int:
    """KV cache + recurrent state of a plan, derived here from the catalog's raw facts (f16 KV,
    f32 state, one 512-token micro-batch beside each sliding window), not from the planner."""
    layers, interval = facts["layers"], facts.get("full_attention_interval", 0)
    recurrent = layers - layers // interval if interval else 0
    swa, window = facts.get("swa_layers", 0), facts.get("sliding_window", 0)
    per_layer_token = 2 * facts["kv_heads"] * facts["head_dim"] * 2
    cells = ctx * parallel
    kv = per_layer_token * ((layers - recurrent - swa) * cells)
    kv += per_layer_token * swa * min(cells, window * parallel + 512)
    if not recurrent:
        return kv
    k_dim, v_dim = facts["linear_key_head_dim"], facts["linear_value_head_dim"]
    k_heads, v_heads = facts["linear_num_key_heads"], facts["linear_num_value_heads"]
    conv = (facts["linear_conv_kernel_dim"] - 1) * (2 * k_heads * k_dim + v_heads * v_dim)
    return kv + recurrent * (conv + v_heads * k_dim * v_dim) * 4 * parallel


def test_every_new_entry_cites_where_its_facts_and_files_came_from() -> None:
    assert len(NEW) >= 15
    for family, size in NEW:
        label = f"{family}:{size['size']}"
        assert len(size["facts"].get("source", "")) > 40, label
        gguf = size["gguf"]
        assert gguf["repo"].count("/") == 1 and len(gguf["source"]) > 20, label
        for quant, file in gguf["files"].items():
            assert file["file"].endswith(".gguf") and quant.lower() in file["file"].lower(), (
                label,
                quant,
            )
            assert file["bytes"] is None or file["bytes"] > 100_000_000, (label, quant)


def test_listed_sizes_agree_with_the_parameters_and_the_quantization() -> None:
    """A typo in a size or a parameter count (a digit off) lands far outside this band."""
    for family, size in NEW + [(f, s) for f, s in _flat_with_files()]:
        params = catalog.facts(size)["params_b"]
        for quant, file in size["gguf"]["files"].items():
            if file["bytes"]:
                expected = params * 1e9 * catalog.bits_per_weight(quant) / 8
                assert 0.7 < file["bytes"] / expected < 1.6, (family, size["size"], quant)


def _flat_with_files() -> list[tuple[str, dict[str, Any]]]:
    return [
        (family, size)
        for family, entry in RAW["families"].items()
        for size in entry["sizes"]
        if "gguf" in size and "facts" not in size
    ]


@pytest.mark.parametrize("family,size", NEW, ids=[f"{f}:{s['size']}" for f, s in NEW])
def test_dry_run_memory_is_the_listed_file_plus_the_cache(
    monkeypatch: pytest.MonkeyPatch, family: str, size: dict[str, Any]
) -> None:
    """The issue's acceptance: on a 512 GB Mac every new name plans within 10% of the file size
    the Hub lists plus its KV cache (and recurrent state); unlisted sizes say they are estimates."""
    name = f"{family}:{size['size']}"
    plan = dry_run(monkeypatch, "m3-ultra", "pull", name, "--dry-run", "--json")
    listed = size["gguf"]["files"][plan["quantization"]]["bytes"]
    assert plan["size_listed"] is (listed is not None)
    if listed is None:
        pytest.skip(f"{name}: the Hub's size of {plan['files'][0]} was not found")
    memory = plan["memory"]
    planned = memory["weights"] + memory["kv_cache"] + memory["recurrent_state"]
    real = listed + independent_cache(size["facts"], plan["context"], plan["parallel"])
    assert abs(planned - real) <= 0.1 * real, (planned, real)
    assert memory["weights"] == listed  # every parameter, idle experts too
    assert plan["files"][0] == size["gguf"]["files"][plan["quantization"]]["file"]


def test_a_moe_reason_names_total_and_active_parameters_and_the_speed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = dry_run(monkeypatch, "m4-pro", "pull", "qwen3-coder:30b", "--dry-run", "--json")
    assert plan["quantization"] == "Q4_K_M" and plan["size_bytes"] == 18_556_689_568
    assert plan["reason"].startswith("30.5B total, 3.3B active: Q4_K_M 18.6 GB")
    assert "~" in plan["reason"] and "tok/s expected on M4 Pro" in plan["reason"]
    assert plan["parameters"] == {
        "total": 30_500_000_000,
        "active": 3_300_000_000,
        "experts": 128,
        "experts_used": 8,
    }
    assert plan["expected_tokens_per_second"] > 30  # 3.3B of 30.5B read per token at 273 GB/s


def test_decode_speed_comes_from_active_parameters() -> None:
    profile = mac("m4-pro")
    moe = catalog.resolve(parse_ref("qwen3-coder:30b"), 40 * GB, 32768, profile)
    dense = catalog.resolve(parse_ref("qwen3:32b"), 40 * GB, 32768, profile)
    assert moe.expected_tps and dense.expected_tps
    assert moe.size_bytes and dense.size_bytes and moe.size_bytes < dense.size_bytes
    assert moe.expected_tps > 4 * dense.expected_tps  # similar file, a tenth of it read per token
    full_read = hardware.expected_speeds(profile, moe.size_bytes, 0, 30_500_000_000)["tg"]
    assert moe.expected_tps > 4 * full_read


def test_a_better_quantization_needs_room_and_speed_to_spare() -> None:
    """With memory for all of them, a dense 32B model stays at Q4_K_M on a chip where Q6_K would
    decode below the floor, and moves up where bandwidth allows; a mixture of experts reads so
    little per token that it moves up on the slower chip too."""
    slow, fast = mac("m1-max"), mac("m2-ultra")
    budget = 120 * GB
    assert catalog.resolve(parse_ref("qwen2.5-coder:32b"), budget, 32768, slow).quant == "Q4_K_M"
    assert catalog.resolve(parse_ref("qwen2.5-coder:32b"), budget, 32768, fast).quant == "Q6_K"
    assert catalog.resolve(parse_ref("qwen3-coder:30b"), budget, 32768, slow).quant == "Q6_K"
    # No machine given (as `pull` resolved before): memory alone decides, as it always did.
    assert catalog.resolve(parse_ref("qwen2.5-coder:32b"), budget, 32768).quant == "Q6_K"


def test_a_hybrid_model_plans_its_recurrent_state_once_per_sequence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    facts = catalog.facts(next(s for f, s in NEW if f == "qwen3-next"))
    per_sequence = 36 * (3 * (2 * 16 * 128 + 32 * 128) + 32 * 128 * 128) * 4
    short = dry_run(
        monkeypatch, "m3-ultra", "pull", "qwen3-next:80b", "--dry-run", "--json",
        env={"IMPETUS_CTX": "8192"},
    )  # fmt: skip
    long = dry_run(monkeypatch, "m3-ultra", "pull", "qwen3-next:80b", "--dry-run", "--json")
    for plan in (short, long):
        assert plan["layers"]["recurrent"] == 36 and facts["layers"] == 48
        assert plan["memory"]["recurrent_state"] == per_sequence * plan["parallel"]
        assert any("recurrent state" in note for note in plan["notes"])
        assert plan["memory"]["snapshots"] > 0  # checkpoints: a state cannot roll back in place
    assert short["context"] == 8192 and long["context"] > short["context"]
    kv_per_token = 12 * 2 * 2 * 256 * 2  # only the 12 full-attention layers hold a KV cache
    assert long["memory"]["kv_cache"] == kv_per_token * long["context"] * long["parallel"]


def test_show_plans_a_catalog_name_that_is_not_pulled_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = dry_run(monkeypatch, "m3-max", "show", "gpt-oss:20b", "--json")
    assert plan["repo"] == "ggml-org/gpt-oss-20b-GGUF" and plan["files"] == [
        "gpt-oss-20b-mxfp4.gguf"
    ]
    assert plan["layers"]["sliding_window"] == 12 and plan["memory"]["snapshots"] > 0
    monkeypatch.setattr(hardware, "detect", lambda: mac("m3-max"))
    text = CliRunner().invoke(app, ["show", "gpt-oss:20b"], env={"COLUMNS": "200"})
    assert text.exit_code == 0 and "not pulled yet" in text.output
    assert "21.0B total, 3.6B active (4 of 32 experts per token)" in text.output
    missing = CliRunner().invoke(app, ["show", "no-such-model"])
    assert missing.exit_code != 0 and "does not exist" in str(missing.exception)


def test_a_dry_run_touches_neither_the_network_nor_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    plan = dry_run(monkeypatch, "m4", "pull", "qwen3:8b", "--dry-run", "--json", env=env)
    assert plan["files"] == ["Qwen3-8B-Q4_K_M.gguf"] and plan["machine"] == "M4"
    assert not (tmp_path / "hf-cache").exists()


def test_a_split_file_lists_every_part(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = dry_run(monkeypatch, "m3-ultra", "pull", "qwen3-coder:480b", "--dry-run", "--json")
    assert plan["files"] == [
        f"Q4_K_M/Qwen3-Coder-480B-A35B-Instruct-Q4_K_M-{i:05d}-of-00006.gguf" for i in range(1, 7)
    ]
    assert plan["size_listed"] is False  # the parts' sizes were not found: estimated, and said


def test_a_dry_run_of_a_repository_or_a_path_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hardware, "detect", lambda: mac("m3"))
    result = CliRunner().invoke(app, ["pull", "hf:org/repo", "--dry-run"])
    assert isinstance(result.exception, InvalidModelName)
    assert "catalog name" in result.exception.message


def test_a_dry_run_that_cannot_fit_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "detect", lambda: mac("m3"))
    result = CliRunner().invoke(app, ["pull", "glm-4.6", "--dry-run"])
    assert result.exception is not None
    assert "355.0B total, 32.0B active" in str(result.exception) and "exceeds" in str(
        result.exception
    )


def test_every_catalog_name_resolves_on_a_machine() -> None:
    settings = Settings()
    for profile in ("m1", "m3-ultra"):
        hw = mac(profile)
        budget = hardware.memory_budget(hw, settings)
        for name in catalog.names():
            try:
                target = catalog.resolve(parse_ref(name), budget, settings.min_ctx, hw)
            except InsufficientMemory:  # the only acceptable failure: it does not fit
                assert profile == "m1", name
                continue
            assert target.info is not None and target.info.file_bytes == target.size_bytes
            assert target.files and target.repo.count("/") == 1


def test_show_of_a_file_names_its_experts_and_recurrent_layers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.test_inspect import _header_gguf

    keys = {"block_count": 8, "embedding_length": 16, "attention.head_count": 2,
            "attention.head_count_kv": 1, "attention.key_length": 32, "context_length": 8192,
            "full_attention_interval": 4, "ssm.conv_kernel": 4, "ssm.inner_size": 64,
            "ssm.state_size": 16, "ssm.group_count": 2, "expert_count": 4,
            "expert_used_count": 1}  # fmt: skip
    tensors = {"token_embd.weight": [16, 10], "blk.0.ffn_up_exps.weight": [16, 8, 4]}
    path = _header_gguf(tmp_path / "hybrid-moe.gguf", "qwen3next", keys, tensors)
    monkeypatch.setattr(hardware, "detect", lambda: mac("m3-max"))
    text = CliRunner().invoke(app, ["show", str(path)], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "B active (1 of 4 experts per token)" in text.output
    assert "recurrent layers  6 of 8" in text.output
    data = json.loads(CliRunner().invoke(app, ["show", str(path), "--json"]).output)
    assert (data["n_experts"], data["recurrent_layers"]) == (4, 6)
    assert (data["n_params"], data["active_params"]) == (160 + 512, 160 + 128)
    assert data["plan"]["state_bytes"] == data["plan"]["n_parallel"] * data["recurrent_state_bytes"]
