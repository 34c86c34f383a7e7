"""ModelManager scheduling with an injected engine factory and memory probe, plus one real load."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from impetus_cli.errors import ContextLengthExceeded, InsufficientMemory, ModelNotFound, Overloaded
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.manager import ModelManager
from impetus_cli.runtime.types import ChatMessage, ChatRequest, HardwareProfile, SamplingParams
from tests.fixtures.fake_engine import FakeEngine, fake_info, fake_model
from tests.fixtures.servers import Registry

GB = 1_000_000_000
CPU = HardwareProfile(
    os="linux",
    arch="x86_64",
    cpu_name="test",
    memory_bytes=64 * GB,
    physical_cores=4,
    logical_cores=8,
    performance_cores=4,
)


@pytest.fixture(autouse=True)
def reset_fake() -> None:
    FakeEngine.reset()


def manager(tmp_path: Path, budget: int, sizes: dict[str, int], **settings: object) -> ModelManager:
    models = {name: fake_model(tmp_path, name, size).path for name, size in sizes.items()}
    base = replace(load_settings(), ctx=2048, parallel=1, keep_alive=300.0, **settings)  # type: ignore[arg-type]
    m = ModelManager(
        base,
        store=Registry(models),
        hardware=CPU,
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: budget,
    )
    sizes_by_path = {models[n]: s for n, s in sizes.items()}
    m.models.info = lambda model: fake_info(model.path, sizes_by_path[model.path])  # type: ignore[method-assign]
    return m


def chat(name: str, text: str = "hello", **kw: object) -> ChatRequest:
    return ChatRequest(model=name, messages=(ChatMessage(role="user", content=text),), **kw)  # type: ignore[arg-type]


def test_ten_concurrent_first_requests_load_the_model_once(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    FakeEngine.load_delay = 0.2
    errors: list[BaseException] = []

    def go() -> None:
        try:
            m.load("a")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and FakeEngine.loads == ["a"]


def test_least_recently_used_idle_model_is_evicted_to_make_room(tmp_path: Path) -> None:
    m = manager(tmp_path, int(2.5 * GB), {"a": GB, "b": GB, "c": GB})
    m.load("a")
    m.load("b")
    list(m.start_chat(chat("a")))  # a is now the most recently used
    m.load("c")
    assert {e.model.name for e in m.loaded()} == {"a", "c"} and FakeEngine.closed == ["b"]


def test_pinned_and_busy_models_are_never_evicted(tmp_path: Path) -> None:
    m = manager(tmp_path, int(2.5 * GB), {"a": GB, "b": GB, "c": GB})
    m.load("a", pin=True)
    gen = m.start_chat(chat("b"))  # b is busy while its generation is open
    with pytest.raises(InsufficientMemory) as info:
        m.load("c")
    assert "a (" in info.value.message and "b (" in info.value.message
    list(gen)
    m.load("c")
    assert {e.model.name for e in m.loaded()} == {"a", "c"}


def test_keep_alive_zero_unloads_right_after_the_request(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    list(m.start_chat(chat("a", keep_alive=0)))
    assert m.loaded() == [] and FakeEngine.closed == ["a"]


def test_idle_models_unload_when_their_keep_alive_expires(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB, "b": GB})
    m.load("a", keep_alive=0.5)
    m.load("b", keep_alive=-1)  # never
    deadline = time.time() + 5
    while any(e.model.name == "a" for e in m.loaded()) and time.time() < deadline:
        time.sleep(0.1)
    assert [e.model.name for e in m.loaded()] == ["b"]
    m.close()


def test_a_full_queue_is_overloaded(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB}, queue_size=0, queue_timeout=0.3)
    first = m.start_chat(chat("a"))  # holds the only slot
    with pytest.raises(Overloaded):
        m.start_chat(chat("a"))
    list(first)
    assert list(m.start_chat(chat("a")))  # the slot is free again


def test_a_prompt_longer_than_the_context_fails_before_any_chunk(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    with pytest.raises(ContextLengthExceeded) as info:
        m.start_chat(chat("a", "x " * 3000))
    assert "maximum context length is 2048 tokens" in info.value.message
    assert list(m.start_chat(chat("a")))  # the failed request gave its slot back


def test_max_tokens_is_clamped_to_the_room_left(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    gen = m.start_chat(chat("a", "x " * 2000, sampling=SamplingParams(max_tokens=10_000)))
    assert gen.max_tokens == 2048 - gen.prompt_tokens
    gen.close()


def test_unknown_model_names_the_available_ones(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB, "b": GB})
    with pytest.raises(ModelNotFound, match="Available models: a, b"):
        m.start_chat(chat("zzz"))


def test_events_are_published_in_order(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    sub = m.bus.subscribe()
    list(m.start_chat(chat("a")))
    m.unload("a")
    kinds = []
    while (event := sub.get(timeout=0.1)) is not None:
        kinds.append(event.kind)
    assert kinds == ["loading", "loaded", "request_started", "request_finished", "unloaded"]


def test_status_snapshot_schema(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    list(m.start_chat(chat("a")))
    status = m.status().to_json()  # the JSON the server sends and `ps` / the TUI read
    assert {
        "version",
        "hardware",
        "budget_bytes",
        "used_bytes",
        "system_memory",
        "models",
        "throughput",
        "recent_requests",
    } <= set(status)
    model = status["models"][0]
    assert model["name"] == "a" and model["requests"] == 1 and model["n_ctx"] == 2048
    assert status["recent_requests"][-1]["status"] == 200


def test_a_failed_load_is_reported_to_every_waiter_and_retried_later(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    original = FakeEngine.factory
    m.engine_factory = lambda plan, info: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="boom"):
        m.load("a")
    m.engine_factory = original
    m.load("a")
    assert FakeEngine.loads == ["a"]


def test_real_load_stream_and_unload_on_the_tiny_gguf(tiny_gguf: Path) -> None:
    pytest.importorskip("llama_cpp")
    settings = replace(load_settings(), ctx=512, parallel=1, threads=2)
    m = ModelManager(settings, store=Registry({"tiny": tiny_gguf}))
    gen = m.start_chat(chat("tiny", sampling=SamplingParams(max_tokens=8, temperature=0)))
    chunks = list(gen)
    assert (
        chunks[-1].finish_reason in ("stop", "length")
        and chunks[-1].prompt_tokens == gen.prompt_tokens
    )
    assert m.status().models[0].memory_bytes > 0
    assert m.unload("tiny") and m.loaded() == []


def test_two_models_loading_at_once_cannot_both_pass_the_budget(tmp_path: Path) -> None:
    m = manager(tmp_path, int(1.5 * GB), {"a": GB, "b": GB})
    FakeEngine.load_delay = 0.5
    outcomes: dict[str, object] = {}

    def load(name: str) -> None:
        try:
            outcomes[name] = m.load(name)
        except InsufficientMemory as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=load, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [n for n, o in outcomes.items() if isinstance(o, InsufficientMemory)]
    assert len(refused) == 1 and len(FakeEngine.loads) == 1
    assert "loading" in str(outcomes[refused[0]]) or "loaded" in str(outcomes[refused[0]])


def test_a_reply_that_loops_is_stopped_by_the_guard_as_a_length_finish(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    FakeEngine.enqueue(["intro "] + [("the same words again ", 7)] * 400)
    chunks = list(m.start_chat(chat("a")))
    final = chunks[-1]
    assert final.finish_reason == "length" and final.completion_tokens < 400
    record = m.metrics.recent_requests()[-1]
    assert record.stopped_by == "loop" and record.status == 200
    assert "impetus_loop_stops_total" in m.metrics.prometheus({})


def test_the_guard_can_be_turned_off(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB}, loop_guard=False)
    FakeEngine.enqueue([("the same words again ", 7)] * 400)
    final = list(m.start_chat(chat("a")))[-1]
    assert final.finish_reason == "stop" and final.completion_tokens == 400


def test_a_request_without_max_tokens_gets_the_server_default(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB}, max_tokens=7)
    gen = m.start_chat(chat("a"))
    list(gen)
    assert gen.max_tokens == 7
    gen = m.start_chat(chat("a", sampling=SamplingParams(max_tokens=3)))
    list(gen)
    assert gen.max_tokens == 3


def test_num_ctx_larger_reloads_with_it_and_beyond_the_model_is_a_clear_error(
    tmp_path: Path,
) -> None:
    from impetus_cli.errors import ContextUnavailable

    m = manager(tmp_path, 10 * GB, {"a": GB})  # loads with ctx 2048; the file allows 4096
    assert m.load("a").n_ctx == 2048
    gen = m.start_chat(chat("a", num_ctx=4096))
    list(gen)
    assert FakeEngine.loads == ["a", "a"] and FakeEngine.closed == ["a"]
    assert m.loaded()[0].plan.n_ctx == 4096
    with pytest.raises(ContextUnavailable, match="at most 4096"):
        m.start_chat(chat("a", num_ctx=8192))


def test_num_ctx_smaller_bounds_the_request_without_a_reload(tmp_path: Path) -> None:
    m = manager(tmp_path, 10 * GB, {"a": GB})
    long = " ".join(["word"] * 600)
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 512"):
        m.start_chat(chat("a", text=long, num_ctx=512))
    gen = m.start_chat(chat("a", num_ctx=1000))
    list(gen)
    assert gen.max_tokens <= 1000 - gen.prompt_tokens and FakeEngine.loads == ["a"]
