"""Build llama.cpp's `llama-bench` and `llama-server` from the source vendored in the
llama-cpp-python sdist of the installed version, into ~/.cache/impetus-bench (outside the repo).

Same source, same native CPU flags (GGML_NATIVE) as llama-cpp-python's own build, so the
comparison measures our Python layer, not a different llama.cpp. Idempotent.

    .venv/bin/python benchmarks/build_llama_cpp.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

CACHE = Path(os.environ.get("IMPETUS_BENCH_CACHE", Path.home() / ".cache" / "impetus-bench"))
TARGETS = ("llama-bench", "llama-server")


def build_dir() -> Path:
    return CACHE / f"llama.cpp-{version('llama-cpp-python')}"


def binaries() -> dict[str, Path]:
    return {t: build_dir() / "build" / "bin" / t for t in TARGETS}


def fetch_source() -> Path:
    """The sdist of the installed llama-cpp-python, unpacked; returns its vendored llama.cpp."""
    src = build_dir() / "src"
    vendored = next(src.glob("llama_cpp_python-*/vendor/llama.cpp"), None) if src.exists() else None
    if vendored:
        return vendored
    src.mkdir(parents=True, exist_ok=True)
    pinned = f"llama-cpp-python=={version('llama-cpp-python')}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            pinned,
            "-d",
            str(src),
        ],
        check=True,
    )
    archive = next(src.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    return next(src.glob("llama_cpp_python-*/vendor/llama.cpp"))


def build() -> dict[str, Path]:
    bins = binaries()
    if all(p.exists() for p in bins.values()):
        return bins
    source = fetch_source()
    out = build_dir() / "build"
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
    ]
    subprocess.run(["cmake", "-S", str(source), "-B", str(out), *flags], check=True)
    subprocess.run(
        ["cmake", "--build", str(out), "-j", str(os.cpu_count() or 2), "--target", *TARGETS],
        check=True,
    )
    for name, path in bins.items():
        if not path.exists():
            found = next(out.rglob(name), None)
            if found is None:
                raise SystemExit(f"{name} was not built")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, path)
    return bins


if __name__ == "__main__":
    for name, path in build().items():
        print(f"{name}: {path}")
