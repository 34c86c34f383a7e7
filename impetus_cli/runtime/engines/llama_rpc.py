"""llama.cpp's RPC backend through the library llama-cpp-python built (libggml-rpc).

Two uses: the model side gives ``llama_model_load_from_file`` the workers' devices and the
layer split of ``LoadPlan.placement`` (``apply_placement``, called by LlamaEngine.load), and
the worker side runs llama.cpp's RPC server on this machine's GPU (Metal) or CPU
(``run_server``, for `impetus worker`). Both go through ggml's backend registry, as llama.cpp's
own `rpc-server` and `--rpc` do, so the protocol always matches the llama.cpp we link.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from impetus_cli.errors import BackendUnavailable, EngineError
from impetus_cli.runtime.types import LoadPlan

DEV_CPU, DEV_GPU, DEV_IGPU, DEV_ACCEL = 0, 1, 2, 3
SETUP_HINT = "Run `./scripts/setup.sh` (it builds llama-cpp-python with -DGGML_RPC=ON)."

_AddServer = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_StartServer = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p
)
_GetMemory = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
_GetName = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)


def library_dir() -> Path | None:
    """Where llama-cpp-python keeps the libraries it built, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def rpc_library() -> Path | None:
    """libggml-rpc next to libllama, when llama.cpp was built with its RPC backend."""
    lib_dir = library_dir()
    if lib_dir is None or not lib_dir.is_dir():
        return None
    return next(iter(sorted(lib_dir.glob("*ggml-rpc.*"))), None)


@cache
def ggml() -> Any:
    """libggml (the backend registry) with the signatures used here; BackendUnavailable when
    this llama.cpp has no RPC backend."""
    from impetus_cli.runtime.engines.llama_native import load_lib

    load_lib()  # loads libllama and the ggml libraries it needs, with the log hooked
    lib_dir = library_dir()
    names = {"darwin": "libggml.dylib", "win32": "ggml.dll"}
    path = lib_dir / names.get(sys.platform, "libggml.so") if lib_dir else None
    if rpc_library() is None or path is None or not path.is_file():
        raise BackendUnavailable("This llama.cpp was built without its RPC backend.", SETUP_HINT)
    lib = ctypes.CDLL(str(path))
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "ggml_backend_reg_by_name": (ctypes.c_void_p, [ctypes.c_char_p]),
        "ggml_backend_reg_get_proc_address": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        "ggml_backend_reg_dev_count": (ctypes.c_size_t, [ctypes.c_void_p]),
        "ggml_backend_reg_dev_get": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
        "ggml_backend_reg_name": (ctypes.c_char_p, [ctypes.c_void_p]),
        "ggml_backend_dev_count": (ctypes.c_size_t, []),
        "ggml_backend_dev_get": (ctypes.c_void_p, [ctypes.c_size_t]),
        "ggml_backend_dev_type": (ctypes.c_int, [ctypes.c_void_p]),
        "ggml_backend_dev_name": (ctypes.c_char_p, [ctypes.c_void_p]),
        "ggml_backend_dev_description": (ctypes.c_char_p, [ctypes.c_void_p]),
        "ggml_backend_dev_backend_reg": (ctypes.c_void_p, [ctypes.c_void_p]),
        "ggml_backend_dev_memory": (
            None,
            [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
        ),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    if not lib.ggml_backend_reg_by_name(b"RPC"):
        raise BackendUnavailable("This llama.cpp has no RPC backend registered.", SETUP_HINT)
    return lib


def _rpc_function(name: str, kind: Any) -> Any:
    lib = ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    address = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not address:
        raise BackendUnavailable(f"This llama.cpp's RPC backend has no {name}.", SETUP_HINT)
    return kind(address)


def device_memory(dev: int) -> tuple[int, int]:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    ggml().ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


@dataclass(frozen=True)
class Device:
    handle: int
    name: str
    description: str
    kind: int


def local_devices() -> list[Device]:
    """This machine's devices: accelerators (Metal, CUDA...) first, then the CPU; no RPC."""
    lib = ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        reg = lib.ggml_backend_dev_backend_reg(dev)
        if reg and lib.ggml_backend_reg_name(reg) == b"RPC":
            continue
        name = lib.ggml_backend_dev_name(dev).decode()
        description = (lib.ggml_backend_dev_description(dev) or b"").decode()
        found.append(Device(dev, name, description, lib.ggml_backend_dev_type(dev)))
    return sorted(found, key=lambda d: d.kind in (DEV_CPU, DEV_ACCEL))


# -- the model side --------------------------------------------------------------------------


def worker_devices(endpoint: str) -> list[int]:
    """The devices of one worker, added to ggml's registry. Call it only after runtime.rpc's
    probe answered: llama.cpp aborts the process when the worker cannot be reached."""
    lib = ggml()
    reg = _rpc_function("ggml_backend_rpc_add_server", _AddServer)(endpoint.encode())
    if not reg:
        raise EngineError(f"The RPC worker {endpoint} offers no device.")
    return [
        lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))
    ]


def apply_placement(lib: Any, mparams: Any, plan: LoadPlan) -> tuple[Any, ...]:
    """Put ``plan.placement`` into llama.cpp's model params: the devices in the plan's order
    (each worker's, then this machine's GPU or CPU) and each one's number of layers as the
    tensor split. Returns the arrays llama.cpp reads during the load (keep them alive)."""
    if not plan.placement:
        return ()
    handles: list[int] = []
    per_endpoint: dict[str, list[int]] = {}
    for part in plan.placement:
        if part.where == "local":
            handles.append(local_devices()[0].handle)
            continue
        endpoint, _, index = part.where.partition("#")
        if endpoint not in per_endpoint:
            per_endpoint[endpoint] = worker_devices(endpoint)
        handles.append(per_endpoint[endpoint][int(index or 0)])
    devices = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)
    split = (ctypes.c_float * lib.llama_max_devices())()
    for i, part in enumerate(plan.placement):
        split[i] = float(part.last - part.first)
    mparams.devices = ctypes.cast(devices, ctypes.c_void_p)
    mparams.tensor_split = split
    mparams.n_gpu_layers = plan.placement[-1].last  # every layer and the output on a device
    mparams.split_mode = 1  # LLAMA_SPLIT_MODE_LAYER
    return devices, split


# -- the worker side -------------------------------------------------------------------------


def server_devices() -> list[Device]:
    """What a worker lends, as llama.cpp's rpc-server picks it: the GPUs if any, else the CPU."""
    devices = local_devices()
    gpus = [d for d in devices if d.kind in (DEV_GPU, DEV_IGPU)]
    return gpus or [d for d in devices if d.kind == DEV_CPU][:1]


_KEEP: list[Any] = []  # ctypes callbacks the C side holds, alive for the life of the process


def cap_memory(device: Device, limit: int) -> None:
    """Make ``device`` report at most ``limit`` bytes (free and total) to RPC clients, which
    split layers by it. llama.cpp's rpc-server lost its ``--mem`` option when it learned
    several devices; this puts it back by replacing the device's ``get_memory`` entry (the
    third pointer of ``struct ggml_backend_device``), after checking that layout against the
    public API, so a llama.cpp that changed it gets a clear error, never a wrong value."""
    table = ctypes.cast(device.handle, ctypes.POINTER(ctypes.c_void_p))
    name_fn, memory_fn = _GetName(table[0]), _GetMemory(table[2])
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    memory_fn(device.handle, ctypes.byref(free), ctypes.byref(total))
    layout_ok = name_fn(device.handle) == device.name.encode() and (
        free.value,
        total.value,
    ) == device_memory(device.handle)
    if not layout_ok:
        raise EngineError(
            "--mem is not supported with this llama.cpp (its device layout changed).",
            "Run the worker without --mem: it then offers the device's memory.",
        )

    def report(_dev: int, free_p: Any, total_p: Any) -> None:
        memory_fn(_dev, free_p, total_p)
        free_p[0], total_p[0] = min(free_p[0], limit), min(total_p[0], limit)

    callback = _GetMemory(report)
    _KEEP.extend((callback, memory_fn))
    table[2] = ctypes.cast(callback, ctypes.c_void_p).value
    if device_memory(device.handle)[1] != min(limit, total.value):
        raise EngineError("--mem could not be applied to this llama.cpp's device.")


def server(
    endpoint: str, devices: Sequence[Device], threads: int, cache_dir: Path | None = None
) -> Callable[[], None]:
    """llama.cpp's RPC server on ``devices``, to listen on ``endpoint`` when called: the call
    returns only if the server could not start (ctypes releases the GIL: call it from a
    thread). With ``cache_dir``, large tensors are kept on this machine's disk and are not sent
    again at the next load."""
    start: Callable[..., None] = _rpc_function("ggml_backend_rpc_start_server", _StartServer)
    handles = (ctypes.c_void_p * len(devices))(*(d.handle for d in devices))
    cache = str(cache_dir).encode() if cache_dir is not None else None

    def run() -> None:
        start(
            endpoint.encode(), cache, threads, len(handles), ctypes.cast(handles, ctypes.c_void_p)
        )

    return run
