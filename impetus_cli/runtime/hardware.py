"""What machine this is: a HardwareProfile for the planner, `impetus bench` and the dashboard.

On a Mac the profile is a pure function of ``sysctl`` and ``system_profiler`` output
(``parse_macos``), so tests feed it captured outputs of every chip; on Linux, of /proc/cpuinfo
and the memory total (``parse_linux``). ``detect()`` runs the commands once per process.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.types import HardwareProfile

GB = 1024**3


@dataclass(frozen=True)
class ChipSpec:
    """One row of llama.cpp's Apple Silicon table (LLaMA-2-7B, Metal): see APPLE_SILICON.md."""

    chip: str
    tier: str
    gpu_cores: int
    bandwidth_gbs: float
    pp512_q4_0: float
    tg128_q4_0: float


CHIP_TABLE: tuple[ChipSpec, ...] = tuple(
    ChipSpec(*row)  # type: ignore[arg-type]
    for row in (
        ("M1", "base", 7, 68.25, 107.8, 14.2),
        ("M1", "base", 8, 68.25, 118.0, 14.2),
        ("M1", "Pro", 14, 200, 232.6, 35.5),
        ("M1", "Pro", 16, 200, 266.3, 36.4),
        ("M1", "Max", 24, 400, 400.3, 54.6),
        ("M1", "Max", 32, 400, 530.1, 61.2),
        ("M1", "Ultra", 48, 800, 772.2, 74.9),
        ("M1", "Ultra", 64, 800, 1030.0, 83.7),
        ("M2", "base", 8, 100, 145.9, 21.7),
        ("M2", "base", 10, 100, 179.6, 21.9),
        ("M2", "Pro", 16, 200, 294.2, 37.9),
        ("M2", "Pro", 19, 200, 341.2, 38.9),
        ("M2", "Max", 30, 400, 537.6, 61.0),
        ("M2", "Max", 38, 400, 671.3, 66.0),
        ("M2", "Ultra", 60, 800, 1013.8, 88.6),
        ("M2", "Ultra", 76, 800, 1238.5, 94.3),
        ("M3", "base", 10, 100, 186.8, 21.3),
        ("M3", "Pro", 14, 150, 269.5, 30.7),
        ("M3", "Pro", 18, 150, 341.7, 30.7),
        ("M3", "Max", 30, 300, 567.6, 56.6),
        ("M3", "Max", 40, 400, 759.7, 66.3),
        ("M3", "Ultra", 60, 800, 1073.1, 88.4),
        ("M3", "Ultra", 80, 800, 1471.2, 92.1),
        ("M4", "base", 10, 120, 221.3, 24.1),
        ("M4", "Pro", 16, 273, 364.1, 49.6),
        ("M4", "Pro", 20, 273, 439.8, 50.7),
        ("M4", "Max", 32, 410, 713.9, 70.0),
        ("M4", "Max", 40, 546, 885.7, 83.1),
    )
)
# Prefill tokens/s per GPU core for a 7B Q4_0 model, by generation (fit to the table).
PP_PER_CORE = {"M1": 15.0, "M2": 18.0, "M3": 18.5, "M4": 22.0}
SIMD_FLAGS = (
    "avx",
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "fma",
    "f16c",
    "amx_tile",
    "neon",
    "asimd",
    "sve",
)
_BRAND = re.compile(r"Apple (M\d+)(?: (Pro|Max|Ultra))?")


def chip_spec(chip: str | None, tier: str | None, gpu_cores: int | None) -> ChipSpec | None:
    """The table row for a chip; binned parts differ, so the nearest GPU-core count wins."""
    rows = [r for r in CHIP_TABLE if r.chip == chip and r.tier == (tier or "base")]
    if not rows:
        return None
    return min(rows, key=lambda r: abs(r.gpu_cores - (gpu_cores or r.gpu_cores)))


def parse_sysctl(text: str) -> dict[str, str]:
    """`sysctl -a` style lines (`key: value`) into a dict."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _gpu_cores(system_profiler_json: str | None) -> int | None:
    if not system_profiler_json:
        return None
    try:
        data = json.loads(system_profiler_json)
    except ValueError:
        return None
    for gpu in data.get("SPDisplaysDataType", []):
        cores = gpu.get("sppci_cores")
        if cores:
            return int(cores)
    return None


def parse_macos(sysctl: str, system_profiler_json: str | None = None) -> HardwareProfile:
    s = parse_sysctl(sysctl)
    brand = s.get("machdep.cpu.brand_string", "")
    memory = int(s.get("hw.memsize", "0"))
    rosetta = s.get("sysctl.proc_translated", "0") == "1"
    match = _BRAND.search(brand)
    chip, tier = (match.group(1), match.group(2) or "base") if match else (None, None)
    gpu = _gpu_cores(system_profiler_json)
    spec = chip_spec(chip, tier, gpu)
    wired = s.get("iogpu.wired_limit_mb", "0")
    perf = int(s.get("hw.perflevel0.physicalcpu", s.get("hw.physicalcpu", "1")))
    return HardwareProfile(
        os="darwin",
        arch="x86_64" if rosetta else "arm64",
        cpu_name=brand or "Apple Silicon",
        memory_bytes=memory,
        physical_cores=int(s.get("hw.physicalcpu", perf)),
        logical_cores=int(s.get("hw.logicalcpu", s.get("hw.physicalcpu", perf))),
        performance_cores=perf,
        efficiency_cores=int(s.get("hw.perflevel1.physicalcpu", "0")),
        chip=chip,
        tier=tier,
        gpu_cores=gpu or (spec.gpu_cores if spec else None),
        gpu_wired_limit_bytes=int(wired) * 1024 * 1024
        if wired not in ("", "0")
        else default_wired_limit(memory),
        memory_bandwidth_gbs=spec.bandwidth_gbs if spec else None,
        rosetta=rosetta,
        simd=("neon",) if chip else (),
    )


def default_wired_limit(memory_bytes: int) -> int:
    """macOS lets the GPU wire about 2/3 of RAM up to 36 GB, about 3/4 above."""
    return int(memory_bytes * (2 / 3 if memory_bytes <= 36 * GB else 3 / 4))


def parse_linux(
    cpuinfo: str, memory_bytes: int, logical: int | None = None, physical: int | None = None
) -> HardwareProfile:
    name, flags, cores = "unknown CPU", set(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and name == "unknown CPU":
            name = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key in ("core id", "physical id"):
            cores.add((key, value.strip()))
    n_logical = logical or max(
        1, cpuinfo.count("processor\t") or cpuinfo.count("processor :") or os.cpu_count() or 1
    )
    n_physical = physical or n_logical
    return HardwareProfile(
        os="linux",
        arch=platform.machine() or "x86_64",
        cpu_name=name,
        memory_bytes=memory_bytes,
        physical_cores=n_physical,
        logical_cores=n_logical,
        performance_cores=n_physical,
        simd=tuple(f for f in SIMD_FLAGS if f in flags),
    )


def _run(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


@functools.cache
def detect() -> HardwareProfile:
    """This machine, measured once per process."""
    import psutil

    if platform.system() == "Darwin":
        keys = (
            "machdep.cpu.brand_string",
            "hw.memsize",
            "hw.physicalcpu",
            "hw.logicalcpu",
            "hw.perflevel0.physicalcpu",
            "hw.perflevel1.physicalcpu",
            "iogpu.wired_limit_mb",
            "sysctl.proc_translated",
        )
        sysctl = "\n".join(_run("sysctl", key).strip() for key in keys)
        return parse_macos(sysctl, _run("system_profiler", "SPDisplaysDataType", "-json"))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpuinfo = fh.read()
    except OSError:
        cpuinfo = ""
    return parse_linux(
        cpuinfo,
        psutil.virtual_memory().total,
        logical=psutil.cpu_count(logical=True),
        physical=psutil.cpu_count(logical=False),
    )


def memory_budget(profile: HardwareProfile, settings: Settings) -> int:
    """Bytes the planner may give to models: the user's budget, else what the OS lets us use
    (the GPU wired limit on Apple Silicon, ~80% of RAM elsewhere) minus a reserve for the
    server itself and the rest of the system."""
    if settings.memory_budget:
        return settings.memory_budget
    if profile.apple_silicon and profile.gpu_wired_limit_bytes:
        usable = profile.gpu_wired_limit_bytes
    else:
        usable = int(profile.memory_bytes * 0.8)
    reserve = min(2 * GB, usable // 8)
    return max(usable - reserve, 0)


def expected_speeds(
    profile: HardwareProfile,
    weight_bytes: int,
    kv_bytes: int,
    n_params: int | None,
    bandwidth_gbs: float | None = None,
    active_params: int | None = None,
) -> dict[str, float]:
    """What this machine should reach (APPLE_SILICON.md): decode is memory-bound,
    tg = 1 / (bytes_per_token / (0.85 * bandwidth) + 5 ms); prefill is compute-bound,
    pp = k * gpu_cores * 6.7e9 / n_params on Apple Silicon (no CPU model for pp here).

    A mixture of experts reads only its active parameters per token: with ``active_params``,
    the weight bytes read are that share of ``weight_bytes``, and prefill is paced by the
    active count too. Memory still holds every expert (that is the planner's business)."""
    bandwidth = bandwidth_gbs or profile.memory_bandwidth_gbs
    read = active_weight_bytes(weight_bytes, n_params, active_params)
    speeds: dict[str, float] = {}
    if bandwidth:
        per_token = read + kv_bytes
        overhead = 0.005 if profile.apple_silicon else 0.0
        speeds["tg"] = 1.0 / (per_token / (0.85 * bandwidth * 1e9) + overhead)
    compute = active_params or n_params
    if profile.apple_silicon and profile.gpu_cores and compute and profile.chip in PP_PER_CORE:
        speeds["pp"] = PP_PER_CORE[profile.chip] * profile.gpu_cores * 6.7e9 / compute
    return speeds


def active_weight_bytes(weight_bytes: int, n_params: int | None, active: int | None) -> int:
    """Bytes of weights one token reads: all of them, or a mixture of experts' active share."""
    if not active or not n_params or active >= n_params:
        return weight_bytes
    return int(weight_bytes * active / n_params)


def describe(profile: HardwareProfile, settings: Settings | None = None) -> list[tuple[str, str]]:
    rows = [
        ("machine", profile.variant or profile.cpu_name),
        ("os", f"{profile.os} {profile.arch}"),
    ]
    if profile.apple_silicon:
        rows += [
            (
                "cores",
                f"{profile.performance_cores} performance + {profile.efficiency_cores} efficiency",
            ),
            ("GPU cores", str(profile.gpu_cores or "?")),
            ("bandwidth", f"{profile.memory_bandwidth_gbs or '?'} GB/s"),
            ("GPU wired limit", f"{(profile.gpu_wired_limit_bytes or 0) / GB:.1f} GiB"),
        ]
    else:
        rows += [
            ("cores", f"{profile.physical_cores} physical / {profile.logical_cores} logical"),
            ("SIMD", " ".join(profile.simd) or "-"),
        ]
    rows.append(("memory", f"{profile.memory_bytes / GB:.1f} GiB"))
    if settings is not None:
        rows.append(("model memory budget", f"{memory_budget(profile, settings) / GB:.1f} GiB"))
    if profile.rosetta:
        rows.append(
            ("WARNING", "Python runs under Rosetta: no Metal, ~10x slower. Use an arm64 Python.")
        )
    return rows


def as_dict(profile: HardwareProfile) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(profile), "variant": profile.variant, "apple_silicon": profile.apple_silicon}
