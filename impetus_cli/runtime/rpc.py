"""llama.cpp's RPC backend: a GGUF model's layers split across this machine and RPC workers.

A worker (`impetus worker`, or llama.cpp's own `rpc-server`) lends one machine's memory and
compute to a model loaded elsewhere. This module is the serving side's arithmetic and the one
network question it asks before a load:

- ``parse_endpoints``: the ``--rpc host:port[,host:port...]`` setting, checked.
- ``probe``: a worker's devices and memory, asked in llama.cpp's own RPC protocol (HELLO,
  DEVICE_COUNT, GET_DEVICE_MEMORY) from Python with a timeout. llama.cpp's client aborts the
  whole process when a worker cannot be reached, so nothing calls it before this answered.
- ``split_plan``: the layers in proportion to each part's memory, and what each part holds
  (``LoadPlan.placement``), so `impetus show`, `ps` and the status JSON can say where each
  part lives and the manager counts only this machine's share against the local budget.

The protocol is unauthenticated: a worker must only listen on a trusted network.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from impetus_cli.errors import ConfigError, EngineError, InsufficientMemory
from impetus_cli.runtime.types import LoadPlan, ModelInfo, Placement

DEFAULT_PORT = 50052
PROBE_TIMEOUT_S = 3.0
SECURITY_NOTE = (
    "llama.cpp's RPC server is unauthenticated and unencrypted: anyone who can reach the port "
    "can use this machine's memory and compute, and read what is sent. Never expose it to an "
    "open network; use it only on a trusted network (or through an SSH tunnel or a VPN)."
)

# llama.cpp's RPC commands (ggml-rpc.cpp, enum rpc_cmd) and the HELLO message's sizes.
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15
CONN_CAPS_SIZE = 24


class WorkerUnavailable(EngineError):
    """An RPC worker did not answer, or went away while it held part of a model."""

    status = 503
    code = "worker_unavailable"

    def __init__(self, message: str, hint: str | None = None, *, retry_after: int = 5):
        super().__init__(message, hint)
        self.retry_after = retry_after


@dataclass(frozen=True)
class WorkerDevice:
    """One device of a worker (a Mac's GPU, a PC's CPU...) and the memory it offers."""

    endpoint: str
    index: int
    free_bytes: int
    total_bytes: int
    version: str = ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); ConfigError when it is not one."""
    host, sep, port = endpoint.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"Not an RPC worker address: {endpoint!r}.",
            f"Give host:port, e.g. 192.168.1.20:{DEFAULT_PORT} (the port `impetus worker` prints).",
        )
    return host, int(port)


def parse_endpoints(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"a:1,b:2"`` or ``["a:1", "b:2"]`` -> the checked, de-duplicated ``host:port`` list."""
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    endpoints: list[str] = []
    for item in (i.strip() for i in items):
        if item:
            host, port = split_endpoint(item)
            text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if text not in endpoints:
                endpoints.append(text)
    return tuple(endpoints)


# -- the probe: three messages of llama.cpp's RPC protocol -----------------------------------


def _send(sock: socket.socket, cmd: int, payload: bytes = b"") -> None:
    # A request: | command (1 byte) | payload size (uint64) | payload |
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)


def _receive(sock: socket.socket, size: int) -> bytes:
    # A reply: | payload size (uint64) | payload |
    (length,) = struct.unpack("<Q", _read(sock, 8))
    if length != size:
        raise OSError(f"unexpected reply of {length} bytes (expected {size})")
    return _read(sock, size)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise OSError("the worker closed the connection")
        data += more
    return data


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[WorkerDevice, ...]:
    """The worker's devices and their free memory. A worker serves one client at a time, so
    one that is busy with another server does not answer the handshake: that is an error too.
    """
    host, port = split_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            _send(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE))
            major, minor, patch = struct.unpack("<BBB", _receive(sock, 4 + CONN_CAPS_SIZE)[:3])
            _send(sock, CMD_DEVICE_COUNT)
            (count,) = struct.unpack("<I", _receive(sock, 4))
            devices = []
            for index in range(count):
                _send(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", index))
                free, total = struct.unpack("<QQ", _receive(sock, 16))
                version = f"{major}.{minor}.{patch}"
                devices.append(WorkerDevice(endpoint, index, free, total, version))
    except (OSError, struct.error) as exc:
        busy = isinstance(exc, TimeoutError) or "timed out" in str(exc)
        raise WorkerUnavailable(
            f"The RPC worker {endpoint} "
            + ("did not answer in time" if busy else f"cannot be reached ({exc})")
            + ".",
            "Start it there with `impetus worker --host <its address>`; a worker serves one "
            "impetus server at a time.",
        ) from None
    if not devices:
        raise WorkerUnavailable(f"The RPC worker {endpoint} has no device to lend.")
    return tuple(devices)


def probe_all(endpoints: Sequence[str], model: str = "") -> tuple[WorkerDevice, ...]:
    """Every worker's devices, for ``model``: a worker serves one client at a time, so one
    that holds another model loaded here is refused at once, naming that model."""
    with _HOLDERS_LOCK:
        busy = {_HOLDERS[e] for e in endpoints if _HOLDERS.get(e, model) != model}
    if busy:
        raise WorkerUnavailable(
            f"The RPC workers hold {', '.join(sorted(busy))} already: a worker serves one split "
            "model at a time.",
            f"Unload it first (`impetus stop {sorted(busy)[0]}`), or start more workers.",
        )
    return tuple(device for endpoint in endpoints for device in probe(endpoint))


_HOLDERS: dict[str, str] = {}  # endpoint -> the model split across it by this process
_HOLDERS_LOCK = threading.Lock()


def hold(endpoints: Sequence[str], model: str) -> None:
    """Note that ``model`` (loaded here) uses ``endpoints``, until ``release``."""
    with _HOLDERS_LOCK:
        _HOLDERS.update(dict.fromkeys(endpoints, model))


def release(endpoints: Sequence[str], model: str) -> None:
    with _HOLDERS_LOCK:
        for endpoint in endpoints:
            if _HOLDERS.get(endpoint) == model:
                del _HOLDERS[endpoint]


# -- the split --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerBytes:
    """A GGUF file's weights by where llama.cpp puts them: the input embeddings (always on
    this machine), each repeating layer, and the output layer (on the last device)."""

    input: int
    layers: tuple[int, ...]
    output: int


def layer_bytes(path: Path, n_layers: int) -> LayerBytes:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from impetus_cli.runtime.gguf import product, read_gguf_header

    _meta, tensors = read_gguf_header(path)
    sizes = {"input": 0, "output": 0}
    layers = [0] * n_layers
    for name, shape, ggml_type in tensors:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        nbytes = product(shape) // block * size
        if name.startswith("blk."):
            index = int(name.split(".")[1])
            if index < n_layers:
                layers[index] += nbytes
        elif name.startswith("token_embd"):
            sizes["input"] += nbytes
        else:
            sizes["output"] += nbytes
    if not any(n.startswith("output.") for n, _s, _t in tensors):
        sizes["output"] += sizes["input"]  # tied embeddings: llama.cpp copies them to the output
    return LayerBytes(sizes["input"], tuple(layers), sizes["output"])


def layer_counts(budgets: Sequence[int], n_slots: int) -> list[int]:
    """``n_slots`` layers in proportion to ``budgets`` (largest remainders), as llama.cpp's own
    default split does by free memory."""
    total = sum(budgets) or 1
    exact = [n_slots * b / total for b in budgets]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(budgets)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n_slots - sum(counts)]:
        counts[i] += 1
    return counts


def split_plan(
    plan: LoadPlan,
    info: ModelInfo,
    local_budget: int,
    devices: Sequence[WorkerDevice],
    weights: LayerBytes,
) -> LoadPlan:
    """``plan`` (made for the memory of all parts together) with its layers placed: workers
    first, this machine last (its part holds the output layer, so logits never cross the
    network), as llama.cpp orders RPC devices. The byte fields of the returned plan count
    this machine's part only; ``placement`` has every part's."""
    n_slots = info.n_layers + 1  # the repeating layers and the output layer
    budgets = [d.free_bytes for d in devices] + [local_budget]
    counts = layer_counts(budgets, n_slots)
    wheres = [d.endpoint + (f"#{d.index}" if d.index else "") for d in devices] + ["local"]
    parts, first = [], 0
    for where, count, budget in zip(wheres, counts, budgets, strict=True):
        if not count and where != "local":
            continue  # a worker too small for one layer is left out (not even connected)
        last = first + count  # [first, last) of the slots; slot n_layers is the output layer
        blocks = range(first, min(last, info.n_layers))
        kv = plan.kv_bytes * len(blocks) // max(1, info.n_layers)  # each layer's KV is there
        held = sum(weights.layers[i] for i in blocks)
        held += weights.output if last > info.n_layers else 0
        held += weights.input if where == "local" else 0
        compute = plan.compute_bytes if count or where == "local" else 0
        parts.append(Placement(where, first, last, held, kv, compute, budget))
        first = last
    _check_fits(plan, parts)
    local = parts[-1]
    note = "layers split: " + "; ".join(
        describe(p, info.n_layers) for p in parts if p.last > p.first
    )
    return replace(
        plan,
        weights_bytes=local.weights_bytes,
        kv_bytes=local.kv_bytes,
        compute_bytes=local.compute_bytes,
        placement=tuple(parts),
        rpc_workers=tuple(dict.fromkeys(p.where.split("#")[0] for p in parts[:-1])),
        notes=(*plan.notes, note),
    )


def _check_fits(plan: LoadPlan, parts: Sequence[Placement]) -> None:
    for part in parts[:-1]:  # this machine's part is checked by the manager, with the others
        if part.total_bytes > part.budget_bytes:
            raise InsufficientMemory(
                f"{plan.model.name}: the part placed on {part.where} needs "
                f"{part.total_bytes / 1e9:.2f} GB; that worker offers "
                f"{part.budget_bytes / 1e9:.2f} GB.",
                "Add a worker, give it more memory (`impetus worker --mem`), or use a smaller "
                "context (--ctx).",
            )


def describe(part: Placement, n_layers: int) -> str:
    """``"layers 0-11 on 10.0.0.2:50052 (1.20 GB)"``; the output layer is called "output"."""
    blocks = range(part.first, min(part.last, n_layers))
    names = [f"{blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])] if blocks else []
    names += ["output"] if part.last > n_layers else []
    where = "here" if part.where == "local" else f"on {part.where}"
    return f"layers {' + '.join(names)} {where} ({part.total_bytes / 1e9:.2f} GB)"


def describe_parts(parts: Sequence[Mapping[str, Any]]) -> str:
    """A placement as the status JSON carries it (dicts), in words, for `impetus ps`."""
    placed = [Placement(**part) for part in parts]
    n_layers = max(p.last for p in placed) - 1
    return "; ".join(describe(p, n_layers) for p in placed if p.last > p.first)
