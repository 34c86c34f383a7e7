"""Build llama.cpp's `llama-bench` and `llama-server` from the source vendored in the
llama-cpp-python sdist of the installed version, into ~/.cache/impetus-bench (outside the repo).

Same source and the same CPU flags as `scripts/setup.sh` builds llama-cpp-python with (OpenMP,
llamafile kernels, CPU repack: ggml's defaults; -march=native, except on x86-64 Linux, where
setup.sh names this CPU's vector extensions and leaves AMX out, whose kernels crashed on Q4_K
models: the binaries then go to `build-noamx/`), so a comparison measures our Python layer, not
a different llama.cpp. Idempotent: when both binaries
exist it only prints where they are. The flags used are recorded in `build-info.json` next to them.

    .venv/bin/python benchmarks/build_llama_cpp.py [--jobs 2] [--rebuild]

IMPETUS_BENCH_CACHE moves the cache. Takes ~10-15 minutes with 2 jobs on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CACHE = Path(os.environ.get("IMPETUS_BENCH_CACHE", Path.home() / ".cache" / "impetus-bench"))
TARGETS = ("llama-bench", "llama-server")
# What we ask for. Options the vendored llama.cpp does not know are dropped (and reported)
# rather than passed, so an unused -D never hides a misconfiguration.
WANTED = {
    "CMAKE_BUILD_TYPE": "Release",
    "GGML_NATIVE": "ON",  # -march=native, as llama-cpp-python's source build (but see wanted())
    "LLAMA_CURL": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_TOOLS": "ON",  # llama-bench and llama-server live under tools/ in newer trees
    "LLAMA_BUILD_SERVER": "ON",
}
# Not options: CMake itself knows these.
CMAKE_BUILTINS = {"CMAKE_BUILD_TYPE"}


# scripts/setup.sh's x86_flags(): /proc/cpuinfo flag -> ggml option
X86_FEATURES = {
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "bmi2": "BMI2",
    "avx_vnni": "AVX_VNNI",
    "avx512f": "AVX512",
    "avx512vbmi": "AVX512_VBMI",
    "avx512_vnni": "AVX512_VNNI",
    "avx512_bf16": "AVX512_BF16",
}


def x86_linux() -> bool:
    return sys.platform == "linux" and os.uname().machine == "x86_64"


def wanted() -> dict[str, str]:
    """WANTED, with setup.sh's x86-64 Linux flags in place of -march=native there."""
    if not x86_linux():
        return dict(WANTED)
    text = Path("/proc/cpuinfo").read_text()
    cpu = set(next(ln for ln in text.splitlines() if ln.startswith("flags")).split(":")[1].split())
    out = {**WANTED, "GGML_NATIVE": "OFF"}
    out |= {f"GGML_AMX_{k}": "OFF" for k in ("TILE", "INT8", "BF16")}
    out |= {f"GGML_{opt}": "ON" for flag, opt in X86_FEATURES.items() if flag in cpu}
    return out


def installed_version() -> str:
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise SystemExit(
            "llama-cpp-python is not installed in this environment; the benchmarks build the "
            "llama.cpp of the installed version. Install it first (pip install llama-cpp-python)."
        ) from None


def build_dir() -> Path:
    return CACHE / f"llama.cpp-{installed_version()}"


def out_dir() -> Path:
    return build_dir() / ("build-noamx" if x86_linux() else "build")


def binaries() -> dict[str, Path]:
    return {t: out_dir() / "bin" / t for t in TARGETS}


def fetch_source() -> Path:
    """The sdist of the installed llama-cpp-python, unpacked; returns its vendored llama.cpp."""
    src = build_dir() / "src"
    found = next(src.glob("llama_cpp_python-*/vendor/llama.cpp"), None) if src.exists() else None
    if found:
        return found
    src.mkdir(parents=True, exist_ok=True)
    pinned = f"llama-cpp-python=={installed_version()}"
    pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    subprocess.run([*pip, pinned, "-d", str(src)], check=True)
    archive = next(src.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    return next(src.glob("llama_cpp_python-*/vendor/llama.cpp"))


def known_options(source: Path) -> set[str]:
    """Every option()/cached set() name in the vendored tree's CMake files."""
    pattern = re.compile(r"\b(?:option|set)\s*\(\s*([A-Z][A-Z0-9_]+)\b[^)]*", re.S)
    names: set[str] = set()
    for path in [*source.rglob("CMakeLists.txt"), *source.rglob("*.cmake")]:
        for match in pattern.finditer(path.read_text(errors="replace")):
            if match.group(0).startswith("option") or "CACHE" in match.group(0):
                names.add(match.group(1))
    return names


def cmake_flags(source: Path) -> tuple[list[str], list[str]]:
    """(-D flags to pass, names dropped because this llama.cpp does not know them)."""
    known = known_options(source) | CMAKE_BUILTINS
    asked = wanted()
    flags = [f"-D{k}={v}" for k, v in asked.items() if k in known]
    return flags, [k for k in asked if k not in known]


def cache_entries(build: Path) -> dict[str, str]:
    """The settings that decide speed, as CMake resolved them (CMakeCache.txt)."""
    keep = re.compile(
        r"^(GGML_(NATIVE|OPENMP|LLAMAFILE|CPU_REPACK|BLAS|AVX\w*|F16C|FMA|BMI2|CPU)"
        r"|CMAKE_BUILD_TYPE|CMAKE_C(XX)?_COMPILER|CMAKE_C(XX)?_FLAGS_RELEASE|LLAMA_BUILD_\w+)$"
    )
    out = {}
    for line in (build / "CMakeCache.txt").read_text().splitlines():
        name, _, value = line.partition("=")
        key = name.split(":")[0]
        if keep.match(key) and not key.endswith("-ADVANCED"):
            out[key] = value
    return out


def record(build: Path, flags: list[str], dropped: list[str]) -> dict[str, object]:
    """Write build-info.json: what was asked, what CMake resolved, llama.cpp's own version."""
    server = build / "bin" / "llama-server"
    ver = subprocess.run([str(server), "--version"], capture_output=True, text=True)
    info: dict[str, object] = {
        "llama_cpp_python": installed_version(),
        "requested_flags": flags,
        "dropped_unknown_options": dropped,
        "cmake_cache": cache_entries(build),
        "llama_server_version": (ver.stdout + ver.stderr).strip().splitlines(),
        "llama_cpp_python_system_info": python_system_info(),
    }
    (build / "bin" / "build-info.json").write_text(json.dumps(info, indent=2))
    return info


def python_system_info() -> str:
    """llama-cpp-python's CPU feature line, to compare with the binaries' (same flags?)."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()[-300:]


def build(jobs: int = 2, rebuild: bool = False) -> dict[str, Path]:
    bins = binaries()
    out = out_dir()
    if all(p.exists() for p in bins.values()) and not rebuild:
        if not (out / "bin" / "build-info.json").exists() and (out / "CMakeCache.txt").exists():
            record(out, *cmake_flags(fetch_source()))  # built before the record existed
        return bins
    source = fetch_source()
    flags, dropped = cmake_flags(source)
    if dropped:
        print(f"this llama.cpp has no option(s) {', '.join(dropped)}: not passed", flush=True)
    subprocess.run(["cmake", "-S", str(source), "-B", str(out), *flags], check=True)
    subprocess.run(
        ["cmake", "--build", str(out), "-j", str(jobs), "--target", *TARGETS], check=True
    )
    for name, path in bins.items():
        if not path.exists():
            found = next((p for p in out.rglob(name) if p.is_file()), None)
            if found is None:
                raise SystemExit(f"{name} was not built")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, path)
    record(out, flags, dropped)
    return bins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("IMPETUS_BENCH_JOBS", 2)))
    parser.add_argument("--rebuild", action="store_true", help="configure and build again")
    args = parser.parse_args()
    bins = build(args.jobs, args.rebuild)
    for name, path in bins.items():
        print(f"{name}: {path}")
    print(f"flags: {bins['llama-bench'].parent / 'build-info.json'}")


if __name__ == "__main__":
    main()
