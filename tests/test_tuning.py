"""The planner as a pure function: (HardwareProfile, ModelInfo, Settings) -> LoadPlan, on captured
Mac and Linux profiles and model facts shaped like real ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from impetus_cli.errors import InsufficientMemory
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.hardware import memory_budget, parse_linux, parse_macos
from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.tuning import estimate_bytes, plan_load
from impetus_cli.runtime.types import LocalModel, ModelInfo

DATA = Path(__file__).parent / "data"
GB = 1024**3

# Qwen2.5-Coder-7B Q4_K_M as its GGUF describes it: 28 layers, 4 KV heads of 128.
QWEN_7B = ModelInfo(
    path=Path("qwen2.5-coder-7b-instruct-q4_k_m.gguf"),
    format="gguf",
    architecture="qwen2",
    n_layers=28,
    n_heads=28,
    n_kv_heads=4,
    head_dim=128,
    embedding_length=3584,
    context_length=32768,
    file_bytes=4_680_000_000,
    vocab_size=152064,
)


def mac(key: str):  # type: ignore[no-untyped-def]
    return parse_macos(
        (DATA / "macos" / f"{key}.sysctl.txt").read_text(),
        (DATA / "macos" / f"{key}.system_profiler.json").read_text(),
    )


def linux():  # type: ignore[no-untyped-def]
    return parse_linux((DATA / "linux" / "epyc.cpuinfo.txt").read_text(), 24 * GB, 2, 2)


def plan(info: ModelInfo, hw, settings: Settings | None = None, budget: int | None = None):  # type: ignore[no-untyped-def]
    settings = settings or Settings()
    model = LocalModel(name="m", format=info.format, path=info.path, origin="path", size_bytes=1)
    return plan_load(model, info, hw, settings, budget or memory_budget(hw, settings))


def test_a_mac_puts_every_layer_on_the_gpu_and_threads_on_performance_cores() -> None:
    hw = mac("m2-max")
    p = plan(QWEN_7B, hw)
    assert p.n_gpu_layers == QWEN_7B.n_layers + 1 and p.n_threads == hw.performance_cores == 8
    assert p.n_ctx == 32768 and p.flash_attn and p.n_batch == 2048
    assert any("GPU" in note for note in p.notes)


def test_linux_runs_on_the_cpu_with_its_physical_cores() -> None:
    p = plan(QWEN_7B, linux())
    assert p.n_gpu_layers == 0 and p.n_threads == 2 and p.n_batch == 512
    assert "CPU only: no GPU layers" in p.notes


def test_a_tight_budget_caps_the_context_and_says_so() -> None:
    budget = int(QWEN_7B.file_bytes + 1.2 * GB)
    p = plan(QWEN_7B, linux(), budget=budget)
    assert 2048 <= p.n_ctx < 32768 and p.n_ctx % 256 == 0
    assert p.total_bytes <= budget and p.n_parallel == 1
    assert any("below the 32768 agents want" in note for note in p.notes)


def test_a_model_that_cannot_fit_names_what_it_needs() -> None:
    with pytest.raises(InsufficientMemory, match=r"needs .* GB"):
        plan(QWEN_7B, linux(), budget=QWEN_7B.file_bytes)


def test_an_asked_context_is_capped_by_the_trained_maximum() -> None:
    p = plan(QWEN_7B, linux(), Settings(ctx=100_000, parallel=1))
    assert p.n_ctx == 32768 and any("trained maximum" in note for note in p.notes)


def test_a_quantized_kv_cache_without_flash_attention_falls_back_to_f16() -> None:
    p = plan(QWEN_7B, linux(), Settings(kv_type="q8_0", flash_attn=False))
    assert p.kv_type == "f16" and not p.flash_attn


def test_parallel_sequences_follow_the_budget() -> None:
    # 57 KB of KV per token: four 32k conversations (12 GB in all) fit half of a 96 GB Mac's
    # budget, two (8.4 GB) half of this 24 GB machine's 17 GB.
    assert plan(QWEN_7B, mac("m2-max")).n_parallel == 4
    assert plan(QWEN_7B, linux()).n_parallel == 2
    small = plan(QWEN_7B, linux(), budget=int(QWEN_7B.file_bytes + 3 * GB))
    assert small.n_parallel == 1


def test_sliding_window_layers_hold_only_their_window(gemma_gguf: Path) -> None:
    info = inspect_model(gemma_gguf)
    assert (info.sliding_window, info.swa_layers) == (512, 15)  # 5 of every 6 layers
    per_layer_token = 2 * info.n_kv_heads * info.head_dim * 2
    p = plan(info, linux(), Settings(ctx=8192, parallel=4))
    assert p.kv_bytes == per_layer_token * (3 * 8192 * 4 + 15 * (512 * 4 + 512))
    no_window = replace(info, swa_layers=0)
    assert p.kv_bytes < plan(no_window, linux(), Settings(ctx=8192, parallel=4)).kv_bytes / 4


def test_gguf_models_with_a_window_plan_room_for_snapshots_and_checkpoints(
    gemma_gguf: Path,
) -> None:
    info = inspect_model(gemma_gguf)
    p = plan(info, linux(), Settings(ctx=8192, parallel=4))
    one = plan(info, linux(), Settings(ctx=8192, parallel=1))
    window = 2 * info.n_kv_heads * info.head_dim * 2 * info.swa_layers * (512 + 512)
    assert p.snapshot_bytes == one.kv_bytes + 4 * window  # a snapshot, a checkpoint per slot
    held = p.weights_bytes + p.kv_bytes + p.compute_bytes + p.snapshot_bytes
    assert p.total_bytes == held + p.cache_ram_bytes + p.draft_bytes
    assert any("prefix snapshots" in note for note in p.notes)
    assert plan(replace(info, format="mlx"), linux()).snapshot_bytes == 0  # mlx-lm copies caches
    assert plan(QWEN_7B, linux()).snapshot_bytes == 0  # no window: prefixes are shared in place
    budget = int(info.file_bytes + 0.15 * GB)
    tight = plan(info, linux(), budget=budget)
    assert tight.n_ctx < info.context_length and tight.snapshot_bytes > 0
    assert budget - 3_000_000 < tight.total_bytes <= budget  # the context makes room for them


def test_the_estimate_grows_with_context_and_sequences() -> None:
    small = estimate_bytes(QWEN_7B, 4096)
    assert estimate_bytes(QWEN_7B, 8192) > small
    assert estimate_bytes(QWEN_7B, 4096, n_parallel=2) > small
    assert estimate_bytes(QWEN_7B, 4096, kv_type="q8_0") < small


def test_the_prompt_cache_disk_tier_is_on_unless_switched_off(tmp_path: Path) -> None:
    from impetus_cli.runtime.config import load_settings

    on = plan(QWEN_7B, linux(), Settings(home=tmp_path))
    assert on.prompt_cache_dir == tmp_path / "prompt-cache" and on.cache_disk_bytes > 0
    env = {"IMPETUS_HOME": str(tmp_path), "IMPETUS_PROMPT_CACHE": "0"}
    off = plan(QWEN_7B, linux(), load_settings({}, env=env))
    assert off.prompt_cache_dir is None and off.cache_disk_bytes == 0
    sized = load_settings({"cache_disk": "5GB", "cache_ram": "1GiB"}, env=env)
    assert (sized.cache_disk, sized.cache_ram) == (5_000_000_000, 2**30)


def test_the_prompt_cache_ram_tier_is_counted_and_fits_what_the_model_leaves() -> None:
    budget = 40 * GB
    p = plan(QWEN_7B, linux(), budget=budget)
    assert p.cache_ram_bytes == budget // 8 and p.total_bytes <= budget
    assert plan(QWEN_7B, linux(), Settings(cache_ram=0), budget=budget).cache_ram_bytes == 0
    asked = plan(QWEN_7B, linux(), Settings(cache_ram=2 * GB), budget=budget)
    assert asked.cache_ram_bytes == 2 * GB
    greedy = plan(QWEN_7B, linux(), Settings(cache_ram=100 * GB), budget=budget)
    assert greedy.total_bytes <= budget and greedy.cache_ram_bytes > 0
    assert any("asked more" in note for note in greedy.notes)


# Qwen3-Next-80B-A3B's shape (see the catalog): 12 of 48 layers attend, 36 keep a delta-rule state.
HYBRID = replace(
    QWEN_7B,
    path=Path("qwen3-next-80b-a3b-q4_k_m.gguf"),
    architecture="qwen3next",
    n_layers=48,
    n_heads=16,
    n_kv_heads=2,
    head_dim=256,
    embedding_length=2048,
    context_length=262144,
    file_bytes=48_400_000_000,
    n_params=80_000_000_000,
    active_params=3_000_000_000,
    n_experts=512,
    n_experts_used=10,
    recurrent_layers=36,
    recurrent_state_bytes=36 * (3 * (2 * 16 * 128 + 32 * 128) + 32 * 128 * 128) * 4,
)


def test_a_hybrid_model_holds_kv_in_its_attention_layers_and_a_fixed_state() -> None:
    short = plan(HYBRID, mac("m3-ultra"), Settings(ctx=8192, parallel=2))
    long = plan(HYBRID, mac("m3-ultra"), Settings(ctx=65536, parallel=2))
    per_token = 12 * 2 * 2 * 256 * 2  # attention layers only
    for p in (short, long):
        assert p.state_bytes == 2 * HYBRID.recurrent_state_bytes
        assert p.kv_bytes == per_token * p.n_ctx * 2 + p.state_bytes
        # A state cannot be rolled back in place: a snapshot of one sequence and a state
        # checkpoint per sequence.
        one = plan(HYBRID, mac("m3-ultra"), Settings(ctx=p.n_ctx, parallel=1))
        assert p.snapshot_bytes == one.kv_bytes + 2 * HYBRID.recurrent_state_bytes
        assert any("recurrent state" in note for note in p.notes)
    assert long.state_bytes == short.state_bytes  # the state does not grow with the context
    assert plan(replace(HYBRID, format="mlx"), mac("m3-ultra")).snapshot_bytes == 0


def test_latent_attention_counts_its_k_and_v_head_sizes() -> None:
    mla = replace(QWEN_7B, n_layers=61, n_kv_heads=1, head_dim=576, head_dim_v=512)
    p = plan(mla, mac("m3-ultra"), Settings(ctx=8192, parallel=1))
    assert p.kv_bytes == 61 * (576 + 512) * 2 * 8192


def test_a_mixture_of_experts_is_expected_to_decode_from_its_active_share() -> None:
    from impetus_cli.runtime.hardware import expected_speeds

    hw = mac("m3-max")
    dense = expected_speeds(hw, HYBRID.file_bytes, 0, HYBRID.n_params)
    moe = expected_speeds(hw, HYBRID.file_bytes, 0, HYBRID.n_params, None, HYBRID.active_params)
    read = HYBRID.file_bytes * 3 / 80
    assert moe["tg"] == pytest.approx(1 / (read / (0.85 * 400e9) + 0.005))
    assert moe["tg"] > 10 * dense["tg"] and moe["pp"] > 20 * dense["pp"]
