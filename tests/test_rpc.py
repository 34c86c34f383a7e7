"""llama.cpp RPC workers on loopback: `impetus worker` processes, a tiny GGUF split across them
by the planner, the split model's output against a local run, and a worker killed mid-request.

The tests that need llama.cpp's RPC backend are skipped, saying why, when llama-cpp-python was
built without it (``./scripts/setup.sh`` builds it with -DGGML_RPC=ON).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from impetus_cli.cli import app
from impetus_cli.errors import ConfigError, InsufficientMemory
from impetus_cli.runtime import rpc
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.engines.llama_rpc import rpc_library
from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.types import (
    ChatMessage,
    HardwareProfile,
    LocalModel,
    ModelInfo,
    SamplingParams,
)
from tests.fixtures.tiny_models import make_plan, write_tiny_gguf

MB, GB = 1_000_000, 1_000_000_000
GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
CPU = HardwareProfile(
    os="linux",
    arch="x86_64",
    cpu_name="test",
    memory_bytes=16 * GB,
    physical_cores=2,
    logical_cores=2,
    performance_cores=2,
)
needs_rpc = pytest.mark.skipif(
    rpc_library() is None,
    reason="llama-cpp-python was built without llama.cpp's RPC backend (no libggml-rpc): "
    "`./scripts/setup.sh --dev` rebuilds it with -DGGML_RPC=ON",
)


# -- workers as processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    process: subprocess.Popen[str]
    endpoint: str
    output: list[str]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)


def start_worker(port: int, mem: str | None = "1GB", **env: str) -> Worker:
    """`impetus worker` in its own process; returns once it said it is ready."""
    command = [sys.executable, "-m", "impetus_cli.cli", "worker", "--port", str(port)]
    command += ["--threads", "1", *(["--mem", mem] if mem else [])]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **env},
    )
    worker = Worker(process, f"127.0.0.1:{port}", [])
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            worker.output.append(line.rstrip())
            if "ready: " in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        process.kill()
        raise AssertionError("the worker did not start:\n" + "\n".join(worker.output))
    return worker


def stop_worker(worker: Worker) -> int:
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
    return worker.process.wait(30)


@pytest.fixture
def two_workers() -> Iterator[list[Worker]]:
    workers = [start_worker(free_port()) for _ in range(2)]
    yield workers
    for worker in workers:
        stop_worker(worker)


@pytest.fixture(scope="module")
def tiny6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama GGUF with 6 layers, so three parts each get some."""
    return write_tiny_gguf(tmp_path_factory.mktemp("rpc") / "tiny-6-layers.gguf", n_layers=6)


def local_model(path: Path, info: ModelInfo) -> LocalModel:
    return LocalModel(
        name=path.name, format="gguf", path=path, origin="path", size_bytes=info.file_bytes
    )


def split_plan_for(path: Path, endpoints: list[str], budget: int = GB) -> Any:
    from impetus_cli.runtime.tuning import plan_load

    info = inspect_model(path)
    settings = replace(load_settings(), rpc=tuple(endpoints), ctx=4096, parallel=1, threads=2)
    return plan_load(local_model(path, info), info, CPU, settings, budget), info


def prompt(engine: Any, text: str = "write a little story") -> list[int]:
    return list(engine.tokenize(engine.render([ChatMessage(role="user", content=text)])))


def greedy(engine: Any, tokens: list[int]) -> tuple[list[int], str]:
    chunks = list(engine.generate(tokens, GREEDY))
    assert chunks[-1].finish_reason == "length"
    return [t for c in chunks for t in c.token_ids], "".join(c.text for c in chunks)


def local_run(path: Path, info: ModelInfo) -> tuple[list[int], str]:
    from impetus_cli.runtime.engines.llama import LlamaEngine

    engine = LlamaEngine.load(make_plan(path, info, 4096), info)
    try:
        return greedy(engine, prompt(engine))
    finally:
        engine.close()


# -- no RPC backend needed -------------------------------------------------------------------


def test_endpoints_are_checked_and_deduplicated() -> None:
    assert rpc.parse_endpoints("10.0.0.2:50052, 10.0.0.3:50052,10.0.0.2:50052") == (
        "10.0.0.2:50052",
        "10.0.0.3:50052",
    )
    assert rpc.parse_endpoints(["[::1]:7000"]) == ("[::1]:7000",)
    for bad in ("10.0.0.2", "host:0", "host:99999", ":50052", "host:port"):
        with pytest.raises(ConfigError, match="Not an RPC worker address"):
            rpc.parse_endpoints(bad)


def test_rpc_setting_comes_from_config_toml(impetus_home: Path) -> None:
    (impetus_home / "config.toml").write_text('rpc = ["10.0.0.2:50052", "10.0.0.3:50052"]\n')
    assert load_settings().rpc == ("10.0.0.2:50052", "10.0.0.3:50052")
    assert load_settings({"rpc": "a:1,b:2"}).rpc == ("a:1", "b:2")


def test_layers_follow_each_parts_memory() -> None:
    assert rpc.layer_counts([2 * GB, GB, GB], 7) == [3, 2, 2]  # 3.5, 1.75, 1.75
    assert sum(rpc.layer_counts([5, 3, 1], 33)) == 33
    assert rpc.layer_counts([0, GB], 5) == [0, 5]


def test_split_plan_places_workers_first_and_counts_this_machines_part(tiny6: Path) -> None:
    from impetus_cli.runtime.tuning import plan_load

    info = inspect_model(tiny6)
    settings = replace(load_settings(), ctx=4096, parallel=1, threads=2)
    whole = plan_load(local_model(tiny6, info), info, CPU, settings, 3 * GB)
    devices = [
        rpc.WorkerDevice("10.0.0.2:50052", 0, GB, 8 * GB),
        rpc.WorkerDevice("10.0.0.3:50052", 0, GB, 8 * GB),
    ]
    weights = rpc.layer_bytes(tiny6, info.n_layers)
    plan = rpc.split_plan(whole, info, GB, devices, weights)
    assert [p.where for p in plan.placement] == ["10.0.0.2:50052", "10.0.0.3:50052", "local"]
    # 6 layers and the output layer, a third each; this machine ends with the output layer.
    assert [(p.first, p.last) for p in plan.placement] == [(0, 3), (3, 5), (5, 7)]
    assert 0 < sum(weights.layers) + weights.input + weights.output < info.file_bytes
    local = plan.placement[-1]
    assert local.weights_bytes == weights.layers[5] + weights.output + weights.input
    assert plan.weights_bytes == local.weights_bytes < whole.weights_bytes
    assert plan.kv_bytes == whole.kv_bytes * 1 // 6
    assert plan.rpc_workers == ("10.0.0.2:50052", "10.0.0.3:50052")
    assert "layers 0-2 on 10.0.0.2:50052" in plan.notes[-1]
    assert "layers 5 + output here" in plan.notes[-1]


def test_a_worker_too_small_for_its_part_is_refused(tiny6: Path) -> None:
    from impetus_cli.runtime.tuning import plan_load

    info = inspect_model(tiny6)
    settings = replace(load_settings(), ctx=4096, parallel=1, threads=2)
    whole = plan_load(local_model(tiny6, info), info, CPU, settings, 3 * GB)
    tiny_worker = rpc.WorkerDevice("10.0.0.2:50052", 0, 10 * MB, 10 * MB)
    weights = rpc.layer_bytes(tiny6, info.n_layers)
    with pytest.raises(InsufficientMemory, match=r"placed on 10\.0\.0\.2:50052"):
        rpc.split_plan(whole, info, 10 * MB, [tiny_worker], weights)


def test_an_unreachable_worker_is_a_clear_503_before_llama_cpp_sees_it() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(rpc.WorkerUnavailable, match=f"127.0.0.1:{port} cannot be reached") as err:
        rpc.probe(f"127.0.0.1:{port}")
    assert err.value.status == 503 and err.value.retry_after > 0


def test_worker_refuses_a_remote_address_without_the_flag() -> None:
    result = CliRunner().invoke(app, ["worker", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "unauthenticated" in result.exception.message
    assert "--allow-remote" in (result.exception.hint or "")


# -- on llama.cpp's RPC backend --------------------------------------------------------------


@needs_rpc
def test_worker_reports_its_memory_cap_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    worker = start_worker(port, mem="1500MB")
    (device,) = rpc.probe(worker.endpoint)
    assert device.free_bytes == device.total_bytes == 1_500_000_000
    assert any("the library llama-cpp-python built" in line for line in worker.output)
    assert stop_worker(worker) == 0
    assert any("worker stopped" in line for line in worker.output)
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


@needs_rpc
def test_without_mem_a_worker_offers_what_impetus_would_budget_there() -> None:
    worker = start_worker(free_port(), mem=None, IMPETUS_MEMORY_BUDGET="1234MB")
    try:
        (device,) = rpc.probe(worker.endpoint)
    finally:
        stop_worker(worker)
    assert device.free_bytes == 1_234_000_000


@needs_rpc
def test_split_across_two_workers_generates_what_a_local_run_does(
    two_workers: list[Worker], tiny6: Path
) -> None:
    from impetus_cli.runtime.engines import load_engine

    endpoints = [w.endpoint for w in two_workers]
    plan, info = split_plan_for(tiny6, endpoints)
    assert [p.where for p in plan.placement] == [*endpoints, "local"]
    assert all(p.last > p.first for p in plan.placement)
    engine: Any = load_engine(plan, info)
    try:
        split = greedy(engine, prompt(engine))
        assert engine.failure is None
    finally:
        engine.close()
    assert split == local_run(tiny6, info)
    assert all(w.process.poll() is None for w in two_workers)


@needs_rpc
def test_a_worker_killed_mid_request_fails_it_cleanly_then_the_model_loads_again(
    two_workers: list[Worker], tiny6: Path
) -> None:
    from impetus_cli.runtime.engines import load_engine

    plan, info = split_plan_for(tiny6, [w.endpoint for w in two_workers])
    engine: Any = load_engine(plan, info)
    try:
        long = SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
        stream = engine.generate(prompt(engine), long)
        assert next(stream).token_ids
        two_workers[1].kill()
        gone = f"worker {two_workers[1].endpoint} went away"
        with pytest.raises(rpc.WorkerUnavailable, match=gone):
            for _chunk in stream:
                pass
        assert engine.failure is not None
        # While the worker is down, requests fail at once with the same 503.
        started = time.monotonic()
        with pytest.raises(rpc.WorkerUnavailable, match="cannot be reached"):
            engine.tokenize("hello")
        assert time.monotonic() - started < 30
        # The worker comes back on its port: the next request loads the model again.
        port = int(two_workers[1].endpoint.rsplit(":", 1)[1])
        two_workers[1] = start_worker(port)
        split = greedy(engine, prompt(engine))
        assert engine.failure is None
    finally:
        engine.close()
    assert split == local_run(tiny6, info)


@needs_rpc
def test_the_server_survives_a_worker_killed_mid_stream(
    two_workers: list[Worker], tiny6: Path
) -> None:
    """Through HTTP and the official client: the stream ends with an error, /health says why,
    the next request is a 503 at once, and once the worker is back the model answers again."""
    import json
    import urllib.request

    import openai

    from impetus_cli.runtime.manager import ModelManager
    from tests.fixtures.servers import Registry, server_settings, start_server

    endpoints = tuple(w.endpoint for w in two_workers)
    # An even three-way split; no RAM prompt-cache tier nor speculation, which this machine
    # would hold beside its part (the plan counts them: planned_bytes is then the part alone).
    settings = server_settings(rpc=endpoints, memory_budget=GB, cache_ram=0, speculative="off")
    manager = ModelManager(settings, store=Registry({"tiny-split": tiny6}), allow_paths=False)
    with start_server(manager, settings) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-any", max_retries=0)
        messages: Any = [{"role": "user", "content": "tell me a long story"}]
        stream = client.chat.completions.create(
            model="tiny-split",
            messages=messages,
            stream=True,
            temperature=0,
            max_tokens=2000,
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        next(chunks)
        with urllib.request.urlopen(url + "/impetus/status", timeout=30) as reply:
            (status,) = json.loads(reply.read())["models"]
        assert [p["where"] for p in status["placement"]] == [*endpoints, "local"]
        assert status["planned_bytes"] == status["placement"][-1]["weights_bytes"] + sum(
            status["placement"][-1][k] for k in ("kv_bytes", "compute_bytes")
        )
        listing = CliRunner().invoke(app, ["ps", "--url", url + "/v1"], env={"COLUMNS": "200"})
        assert f"layers 0-2 on {endpoints[0]}" in listing.output
        two_workers[0].kill()
        with pytest.raises(openai.APIError):
            for _chunk in chunks:
                pass
        with urllib.request.urlopen(url + "/health", timeout=30) as reply:
            health = json.loads(reply.read())
        assert health["status"] == "degraded"
        assert f"{two_workers[0].endpoint} went away" in health["failures"]["tiny-split"]
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="tiny-split", messages=messages, max_tokens=4)
        assert refused.value.status_code == 503
        port = int(two_workers[0].endpoint.rsplit(":", 1)[1])
        two_workers[0] = start_worker(port)
        again = client.chat.completions.create(
            model="tiny-split", messages=messages, max_tokens=8, temperature=0
        )
        assert again.choices[0].message.content
        manager.close()
