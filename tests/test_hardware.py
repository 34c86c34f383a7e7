"""Hardware profiles from captured macOS and Linux outputs, the budget, and expected speeds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.hardware import (
    CHIP_TABLE,
    expected_speeds,
    memory_budget,
    parse_linux,
    parse_macos,
)

DATA = Path(__file__).parent / "data"
GB = 1024**3


def mac(key: str):  # type: ignore[no-untyped-def]
    return parse_macos(
        (DATA / "macos" / f"{key}.sysctl.txt").read_text(),
        (DATA / "macos" / f"{key}.system_profiler.json").read_text(),
    )


@pytest.mark.parametrize(
    ("key", "chip", "tier", "gpu", "perf", "eff", "memory_gb", "bandwidth"),
    [
        ("m1", "M1", "base", 8, 4, 4, 16, 68.25),
        ("m1-pro", "M1", "Pro", 16, 8, 2, 32, 200),
        ("m1-max", "M1", "Max", 32, 8, 2, 64, 400),
        ("m1-ultra", "M1", "Ultra", 64, 16, 4, 128, 800),
        ("m2", "M2", "base", 10, 4, 4, 24, 100),
        ("m2-pro", "M2", "Pro", 19, 8, 4, 32, 200),
        ("m2-max", "M2", "Max", 38, 8, 4, 96, 400),
        ("m2-ultra", "M2", "Ultra", 76, 16, 8, 192, 800),
        ("m3", "M3", "base", 10, 4, 4, 8, 100),
        ("m3-pro", "M3", "Pro", 14, 5, 6, 18, 150),
        ("m3-max-30", "M3", "Max", 30, 10, 4, 36, 300),
        ("m3-max", "M3", "Max", 40, 12, 4, 128, 400),
        ("m3-ultra", "M3", "Ultra", 80, 24, 8, 512, 800),
        ("m4", "M4", "base", 10, 4, 6, 16, 120),
        ("m4-pro", "M4", "Pro", 20, 10, 4, 48, 273),
        ("m4-max-32", "M4", "Max", 32, 10, 4, 36, 410),
        ("m4-max", "M4", "Max", 40, 12, 4, 128, 546),
    ],
)
def test_every_chip_generation_and_tier_is_recognised(
    key: str, chip: str, tier: str, gpu: int, perf: int, eff: int, memory_gb: int, bandwidth: float
) -> None:
    p = mac(key)
    assert (p.chip, p.tier, p.gpu_cores, p.performance_cores, p.efficiency_cores) == (
        chip,
        tier,
        gpu,
        perf,
        eff,
    )
    assert (
        p.memory_bytes == memory_gb * GB and p.memory_bandwidth_gbs == bandwidth and not p.rosetta
    )
    expected_wired = memory_gb * GB * (2 / 3 if memory_gb <= 36 else 3 / 4)
    assert p.gpu_wired_limit_bytes == int(expected_wired)
    assert p.variant == (chip if tier == "base" else f"{chip} {tier}")


def test_rosetta_is_detected() -> None:
    p = mac("m1-rosetta")
    assert p.rosetta and p.arch == "x86_64"


def test_a_wired_limit_override_wins() -> None:
    assert mac("m2-pro-wired").gpu_wired_limit_bytes == 28672 * 1024 * 1024


def test_linux_profiles_from_cpuinfo() -> None:
    x86 = parse_linux(
        (DATA / "linux" / "epyc.cpuinfo.txt").read_text(), 24 * GB, logical=2, physical=2
    )
    assert (
        x86.cpu_name == "AMD EPYC 9B14"
        and {"avx2", "avx512f", "fma"} <= set(x86.simd)
        and x86.chip is None
    )
    arm = parse_linux(
        (DATA / "linux" / "graviton.cpuinfo.txt").read_text(), 8 * GB, logical=2, physical=2
    )
    assert {"asimd", "sve"} <= set(arm.simd)


def test_budget_follows_the_wired_limit_on_a_mac_and_80_percent_elsewhere() -> None:
    settings = load_settings()
    m1 = mac("m1")
    assert memory_budget(m1, settings) == m1.gpu_wired_limit_bytes - min(
        2 * GB, m1.gpu_wired_limit_bytes // 8
    )
    linux = parse_linux("", 32 * GB, logical=8, physical=4)
    assert memory_budget(linux, settings) == int(32 * GB * 0.8) - 2 * GB
    assert memory_budget(linux, replace(settings, memory_budget=5 * GB)) == 5 * GB


def test_expected_decode_speed_model_tracks_the_reference_table() -> None:
    """tg128 of LLaMA-2-7B Q4_0 (3.56 GiB of weights) from bandwidth alone, against the table."""
    weights = int(3.56 * GB)
    errors = []
    for row in CHIP_TABLE:
        profile = replace(
            mac("m1"),
            chip=row.chip,
            tier=row.tier,
            gpu_cores=row.gpu_cores,
            memory_bandwidth_gbs=row.bandwidth_gbs,
        )
        tg = expected_speeds(profile, weights, 0, 6_740_000_000)["tg"]
        errors.append(abs(tg - row.tg128_q4_0) / row.tg128_q4_0)
    assert sum(errors) / len(errors) < 0.25  # a first-principles fit, not a lookup


def test_expected_prefill_speed_scales_with_gpu_cores() -> None:
    small = expected_speeds(mac("m4"), 4 * GB, 0, 6_740_000_000)["pp"]
    big = expected_speeds(mac("m4-max"), 4 * GB, 0, 6_740_000_000)["pp"]
    assert big / small == pytest.approx(4.0) and 150 < small < 300
