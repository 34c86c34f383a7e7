"""The MLX engine on real mlx-lm (CPU through mlx[cpu]) with the tiny random-weight model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.errors import ContextLengthExceeded, EngineError, ImpetusError
from impetus_cli.runtime.types import ChatMessage, GenerationChunk, SamplingParams

pytest.importorskip("mlx_lm")

IM_END = "<|im_end|>"


def prompt_tokens(engine: Any, *turns: str) -> list[int]:
    roles = ("user", "assistant")
    messages = [ChatMessage(role=roles[i % 2], content=t) for i, t in enumerate(turns)]  # type: ignore[arg-type]
    return list(engine.tokenize(engine.render(messages)))


def run(engine: Any, tokens: list[int], **sampling: Any) -> list[GenerationChunk]:
    return list(engine.generate(tokens, SamplingParams(**sampling)))


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def test_loads_with_its_context_and_weights_in_memory(tiny_mlx_engine: Any) -> None:
    assert tiny_mlx_engine.n_ctx == 1024
    assert tiny_mlx_engine.info.architecture == "llama"
    assert tiny_mlx_engine.memory_bytes > 64 * 300 * 2  # at least the embedding table


def test_renders_chat_through_the_tokenizer_template(tiny_mlx_engine: Any) -> None:
    prompt = tiny_mlx_engine.render(
        [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tokens = tiny_mlx_engine.tokenize(prompt)
    assert tokens.count(tiny_mlx_engine.tokenize(IM_END)[0]) == 2
    assert tiny_mlx_engine.detokenize(tokens) == prompt


def test_control_tokens_in_plain_text_are_not_parsed_without_special(tiny_mlx_engine: Any) -> None:
    (end,) = tiny_mlx_engine.tokenize(IM_END)
    plain = tiny_mlx_engine.tokenize(IM_END, special=False)
    assert end not in plain and tiny_mlx_engine.detokenize(plain) == IM_END


def test_streams_text_then_one_final_chunk_with_counters(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "hello there")
    chunks = run(tiny_mlx_engine, tokens, max_tokens=10, temperature=0, ignore_eos=True)
    *deltas, final = chunks
    assert deltas and all(c.finish_reason is None and c.text for c in deltas)
    assert final.finish_reason == "length" and final.prompt_tokens == len(tokens)
    ids = [t for c in chunks for t in c.token_ids]
    assert final.completion_tokens == len(ids) == 10
    assert tiny_mlx_engine.detokenize(ids) == text_of(chunks)
    assert final.ttft_s > 0 and final.prompt_tps > 0 and final.generation_tps > 0


def test_temperature_zero_is_deterministic(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "the same")
    a = text_of(run(tiny_mlx_engine, tokens, max_tokens=16, temperature=0))
    assert a and a == text_of(run(tiny_mlx_engine, tokens, max_tokens=16, temperature=0))


def test_the_same_seed_and_filters_give_the_same_text(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "seeded")
    params = dict(max_tokens=24, temperature=1.5, top_p=0.9, top_k=50, min_p=0.01)
    a = text_of(run(tiny_mlx_engine, tokens, seed=7, ignore_eos=True, **params))
    b = text_of(run(tiny_mlx_engine, tokens, seed=7, ignore_eos=True, **params))
    c = text_of(run(tiny_mlx_engine, tokens, seed=8, ignore_eos=True, **params))
    assert a == b and a != c


def test_an_unseeded_request_does_not_replay_the_last_seed(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "seeded")
    params: dict[str, Any] = dict(max_tokens=24, temperature=1.5, ignore_eos=True)
    text_of(run(tiny_mlx_engine, tokens, seed=3, **params))
    first = text_of(run(tiny_mlx_engine, tokens, **params))
    text_of(run(tiny_mlx_engine, tokens, seed=3, **params))
    assert text_of(run(tiny_mlx_engine, tokens, **params)) != first


def test_max_tokens_ends_with_length(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "hello")
    final = run(tiny_mlx_engine, tokens, max_tokens=3, temperature=0, ignore_eos=True)[-1]
    assert final.finish_reason == "length" and final.completion_tokens == 3


def test_end_of_sequence_ends_with_stop_and_emits_no_marker(tiny_mlx_engine: Any) -> None:
    (end,) = tiny_mlx_engine.tokenize(IM_END)
    tokens = prompt_tokens(tiny_mlx_engine, "finish")
    chunks = run(tiny_mlx_engine, tokens, max_tokens=8, temperature=0, logit_bias={end: 100.0})
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 0
    assert text_of(chunks) == ""


def test_logit_bias_steers_the_pick(tiny_mlx_engine: Any) -> None:
    (x,) = tiny_mlx_engine.tokenize("x", special=False)
    tokens = prompt_tokens(tiny_mlx_engine, "steer")
    chunks = run(tiny_mlx_engine, tokens, max_tokens=4, temperature=0, logit_bias={x: 100.0})
    assert text_of(chunks) == "xxxx"


def test_a_completion_keeps_the_leading_space_of_its_first_token(tiny_mlx_engine: Any) -> None:
    (the,) = tiny_mlx_engine.tokenize(" the", special=False)
    prompt = tiny_mlx_engine.tokenize("Once upon a time there was", special=False)
    chunks = run(tiny_mlx_engine, prompt, max_tokens=3, temperature=0, logit_bias={the: 100.0})
    assert text_of(chunks) == " the the the"


def test_streamed_pieces_add_up_to_the_decoded_tokens(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "pieces")
    chunks = run(tiny_mlx_engine, tokens, max_tokens=60, temperature=1.5, seed=4, ignore_eos=True)
    ids = [t for c in chunks for t in c.token_ids]
    assert len(ids) == 60 and text_of(chunks) == tiny_mlx_engine.detokenize(ids)


def test_a_stop_string_split_across_tokens_is_never_emitted(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "stop test")
    full = run(tiny_mlx_engine, tokens, max_tokens=40, temperature=0, ignore_eos=True)
    pieces = [c.text for c in full[:-1]]
    # A stop string from the end of one piece to the start of the next one.
    i = next(i for i in range(1, len(pieces)) if len(pieces[i - 1]) >= 2 and pieces[i])
    stop = pieces[i - 1][-2:] + pieces[i][:2]
    chunks = run(
        tiny_mlx_engine, tokens, max_tokens=40, temperature=0, ignore_eos=True, stop=(stop,)
    )
    out = text_of(chunks)
    assert chunks[-1].finish_reason == "stop"
    assert stop not in out and out == text_of(full)[: text_of(full).index(stop)]


def test_text_held_for_a_possible_stop_is_emitted_when_generation_ends(
    tiny_mlx_engine: Any,
) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "held back")
    full = text_of(run(tiny_mlx_engine, tokens, max_tokens=6, temperature=0, ignore_eos=True))
    stop = full[-1] + "\x00never"  # the last character could start it; the rest never comes
    out = run(tiny_mlx_engine, tokens, max_tokens=6, temperature=0, ignore_eos=True, stop=(stop,))
    assert text_of(out) == full and out[-1].finish_reason == "length"


def test_cancellation_stops_within_a_token(tiny_mlx_engine: Any) -> None:
    cancel = threading.Event()
    tokens = prompt_tokens(tiny_mlx_engine, "go")
    sampling = SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
    seen, after_cancel, final = 0, 0, None
    for chunk in tiny_mlx_engine.generate(tokens, sampling, cancel):
        if chunk.finish_reason:
            final = chunk
            continue
        after_cancel += cancel.is_set()
        seen += len(chunk.token_ids)
        if seen >= 3:
            cancel.set()
    assert final is not None and final.finish_reason == "cancelled" and after_cancel == 0
    # The token sampled after the cancel is dropped.
    assert final.completion_tokens == seen + len(final.token_ids) < 10


def test_a_follow_up_turn_reuses_the_prompt_cache(tiny_mlx_engine: Any) -> None:
    tiny_mlx_engine.clear_cache()
    first = prompt_tokens(tiny_mlx_engine, "tell me about the quick brown fox")
    reply_chunks = run(tiny_mlx_engine, first, max_tokens=8, temperature=0)
    assert reply_chunks[-1].cached_tokens == 0
    second = prompt_tokens(
        tiny_mlx_engine, "tell me about the quick brown fox", text_of(reply_chunks), "and the dog?"
    )
    final = run(tiny_mlx_engine, second, max_tokens=4, temperature=0)[-1]
    assert final.cached_tokens >= len(first)
    assert tiny_mlx_engine.last_evaluated_tokens == len(second) - final.cached_tokens


def test_the_same_prompt_again_evaluates_only_its_last_token(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "again")
    a = run(tiny_mlx_engine, tokens, max_tokens=5, temperature=0)
    b = run(tiny_mlx_engine, tokens, max_tokens=5, temperature=0)
    assert b[-1].cached_tokens == len(tokens) - 1 and text_of(a) == text_of(b)


def cold(engine: Any, tokens: list[int], **sampling: Any) -> str:
    engine.clear_cache()
    return text_of(run(engine, tokens, **sampling))


@pytest.mark.parametrize("ending", ["cancel", "eos", "stop"])
def test_a_reused_cache_gives_the_same_text_as_a_cold_run(
    tiny_mlx_engine: Any, ending: str
) -> None:
    (end,) = tiny_mlx_engine.tokenize(IM_END)
    first = prompt_tokens(tiny_mlx_engine, "warm up the cache")
    cancel = threading.Event()
    sampling = SamplingParams(max_tokens=12, temperature=0, repeat_penalty=1.3)
    if ending == "eos":
        sampling = SamplingParams(max_tokens=12, temperature=0, logit_bias={end: 100.0})
    chunks = []
    for chunk in tiny_mlx_engine.generate(first, sampling, cancel):
        chunks.append(chunk)
        if ending == "cancel":
            cancel.set()  # after the first piece of text: the prompt is in the cache
    reply = text_of(chunks)
    if ending == "stop":
        reply = text_of(
            run(tiny_mlx_engine, first, max_tokens=12, temperature=0, stop=(reply[2:4],))
        )
    second = prompt_tokens(tiny_mlx_engine, "warm up the cache", reply, "next")
    params: dict[str, Any] = dict(max_tokens=12, temperature=0, repeat_penalty=1.3)
    warm = run(tiny_mlx_engine, second, **params)
    assert warm[-1].cached_tokens >= len(first)
    assert text_of(warm) == cold(tiny_mlx_engine, second, **params)


def test_concurrent_generations_take_turns_and_match_sequential_ones(tiny_mlx_engine: Any) -> None:
    prompts = [prompt_tokens(tiny_mlx_engine, f"thread {i}") for i in range(3)]
    params: dict[str, Any] = dict(max_tokens=12, temperature=0, ignore_eos=True)
    expected = [cold(tiny_mlx_engine, p, **params) for p in prompts]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = text_of(run(tiny_mlx_engine, prompts[i], **params))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [results.get(i) for i in range(3)] == expected


def test_a_prompt_longer_than_the_context_is_refused_before_streaming(
    tiny_mlx_engine: Any,
) -> None:
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 1024"):
        tiny_mlx_engine.generate([5] * 1025, SamplingParams())


def test_generation_stops_at_the_context_end(tiny_mlx_engine: Any) -> None:
    tokens = [5] * 1020
    final = run(tiny_mlx_engine, tokens, temperature=0, ignore_eos=True)[-1]
    assert final.finish_reason == "length" and final.completion_tokens == 4


def test_a_grammar_request_is_refused_before_streaming(tiny_mlx_engine: Any) -> None:
    with pytest.raises(ImpetusError, match="not available for MLX") as info:
        tiny_mlx_engine.generate([1, 2, 3], SamplingParams(grammar='root ::= "x"'))
    assert info.value.status == 400 and info.value.hint


def test_logprobs_come_with_each_token_when_asked(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "probabilities")
    chunks = run(tiny_mlx_engine, tokens, max_tokens=5, temperature=0, ignore_eos=True, logprobs=1)
    pairs = [(len(c.token_ids), len(c.logprobs)) for c in chunks]
    assert all(a == b for a, b in pairs) and all(lp <= 0 for c in chunks for lp in c.logprobs)


@pytest.fixture(scope="module")
def q8_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """hidden 128 / 4 heads: a head size of 32 splits into quantization groups."""
    from impetus_cli.runtime.engines.mlx import MlxEngine
    from impetus_cli.runtime.inspect import inspect_model
    from tests.fixtures.tiny_mlx import write_tiny_mlx
    from tests.fixtures.tiny_models import make_plan

    folder = write_tiny_mlx(tmp_path_factory.mktemp("mlx-q8") / "tiny", hidden_size=128)
    info = inspect_model(folder)
    engine = MlxEngine.load(make_plan(folder, info, 1024, kv_type="q8_0"), info)
    yield engine
    engine.close()


def test_a_q8_kv_type_quantizes_the_cache_and_still_reuses_it(q8_engine: Any) -> None:
    assert q8_engine.kv_bits == 8
    first = prompt_tokens(q8_engine, "quantized cache")
    reply = text_of(run(q8_engine, first, max_tokens=6, temperature=0, ignore_eos=True))
    second = prompt_tokens(q8_engine, "quantized cache", reply, "more")
    final = run(q8_engine, second, max_tokens=6, temperature=0, ignore_eos=True)[-1]
    assert final.finish_reason == "length" and final.cached_tokens >= len(first)
    assert type(q8_engine._pool.entries[0].cache[0]).__name__ == "QuantizedKVCache"


def test_a_failed_serial_generation_is_an_engine_error_and_the_next_one_is_served(
    q8_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quantized-cache path runs in the reader's thread: a failure there reaches the reader
    as an EngineError, shows in ``failure``, drops the cache it was extending (its state is
    unknown), and the next request is served from a fresh one."""
    real, raised = q8_engine._steps, []

    def steps(*args: Any) -> Any:
        if not raised:
            raised.append(True)
            raise RuntimeError("injected failure")
        return real(*args)

    monkeypatch.setattr(q8_engine, "_steps", steps)
    tokens = prompt_tokens(q8_engine, "fails once")
    greedy: dict[str, Any] = {"max_tokens": 3, "temperature": 0, "ignore_eos": True}
    with pytest.raises(EngineError, match="injected failure"):
        run(q8_engine, tokens, **greedy)
    assert q8_engine.failure is not None and "injected failure" in q8_engine.failure
    final = run(q8_engine, tokens, **greedy)[-1]
    assert final.finish_reason == "length" and final.completion_tokens == 3
    assert final.cached_tokens == 0 and q8_engine.failure is None


def test_the_kv_type_stays_full_precision_when_heads_do_not_split(tiny_mlx_engine: Any) -> None:
    from impetus_cli.runtime.engines.mlx import _kv_bits

    assert _kv_bits("q8_0", 16, tiny_mlx_engine._model) is None  # head size 16 < a group
    assert _kv_bits("f16", 64, tiny_mlx_engine._model) is None
    assert _kv_bits("q4_0", 64, tiny_mlx_engine._model) == 4


def test_embeddings_are_normalised_vectors_of_the_hidden_size(tiny_mlx_engine: Any) -> None:
    vectors = tiny_mlx_engine.embed(["hello world", "something else", "hello world"])
    assert [len(v) for v in vectors] == [64, 64, 64]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)
    assert vectors[0] != vectors[1] and vectors[0] == pytest.approx(vectors[2], abs=1e-6)


def test_top_logprobs_are_sorted_and_led_by_the_greedy_pick(tiny_mlx_engine: Any) -> None:
    import math

    tokens = prompt_tokens(tiny_mlx_engine, "top")
    chunks = run(tiny_mlx_engine, tokens, max_tokens=6, temperature=0, ignore_eos=True, logprobs=4)
    ids = [t for c in chunks for t in c.token_ids]
    chosen = [lp for c in chunks for lp in c.logprobs]
    tops = [t for c in chunks for t in c.top_logprobs]
    assert len(ids) == len(chosen) == len(tops) == 6
    for token, lp, top in zip(ids, chosen, tops, strict=True):
        values = [p for _, p in top]
        assert len(top) == 4 and values == sorted(values, reverse=True)
        assert top[0][0] == token and math.isclose(top[0][1], lp, rel_tol=1e-5)


def test_logprobs_zero_gives_the_pick_without_alternatives(tiny_mlx_engine: Any) -> None:
    tokens = prompt_tokens(tiny_mlx_engine, "zero")
    greedy = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    chunks = run(tiny_mlx_engine, tokens, logprobs=0, **greedy)
    assert [t for c in chunks for t in c.top_logprobs] == [()] * 4
    assert len([lp for c in chunks for lp in c.logprobs]) == 4
    plain = run(tiny_mlx_engine, tokens, **greedy)
    assert all(c.logprobs == () and c.top_logprobs == () for c in plain)


@pytest.mark.parametrize("name", ["tiny_mlx_engine", "q8_engine"])  # batched, serial
def test_logprobs_follow_the_logit_bias_not_temperature_or_penalties(
    name: str, request: pytest.FixtureRequest
) -> None:
    """The reported distribution is the model's with the logit bias added: sampling settings
    (temperature, top-p, repetition / presence / frequency penalties) change the pick only."""
    import math

    engine = request.getfixturevalue(name)
    tokens = prompt_tokens(engine, "again again again")
    (repeated,) = engine.tokenize("a", special=False)  # in the prompt: penalties would hit it
    ask = {"max_tokens": 1, "ignore_eos": True, "logprobs": 5, "logit_bias": {repeated: 20.0}}
    (greedy,) = [t for c in run(engine, tokens, temperature=0, **ask) for t in c.top_logprobs]
    sampled = run(
        engine,
        tokens,
        temperature=1.5,
        top_p=0.5,
        seed=3,
        repeat_penalty=1.5,
        presence_penalty=2.0,
        frequency_penalty=1.0,
        **ask,
    )
    (top,) = [t for c in sampled for t in c.top_logprobs]
    assert greedy[0][0] == repeated and [i for i, _ in top] == [i for i, _ in greedy]
    assert [p for _, p in top] == pytest.approx([p for _, p in greedy], abs=1e-3)
    assert sum(math.exp(p) for _, p in top) <= 1 + 1e-5


def test_logprobs_taken_before_the_penalties_stay_with_their_step(tiny_mlx_engine: Any) -> None:
    """A penalty too small to matter: the same picks, and each step reports its own numbers
    (mlx-lm computes a step ahead, so the recorded logits queue up)."""
    tokens = prompt_tokens(tiny_mlx_engine, "in step")
    ask = {"max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 3}
    plain = run(tiny_mlx_engine, tokens, **ask)
    tapped = run(tiny_mlx_engine, tokens, frequency_penalty=1e-9, **ask)
    for a, b in zip(plain, tapped, strict=True):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert [[i for i, _ in t] for t in a.top_logprobs] == [
            [i for i, _ in t] for t in b.top_logprobs
        ]


@pytest.fixture
def pooled_engine(tiny_mlx_dir: Path) -> Iterator[Any]:
    """Two conversations' prompt caches."""
    from impetus_cli.runtime.engines.mlx import MlxEngine
    from impetus_cli.runtime.inspect import inspect_model
    from tests.fixtures.tiny_models import make_plan

    info = inspect_model(tiny_mlx_dir)
    engine = MlxEngine.load(make_plan(tiny_mlx_dir, info, 1024, n_parallel=2), info)
    yield engine
    engine.close()


def test_two_conversations_keep_their_own_prompt_caches(pooled_engine: Any) -> None:
    a = prompt_tokens(pooled_engine, "conversation about apples and pears")
    b = pooled_engine.tokenize("a completely different document about the sea", special=False)
    greedy = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    run(pooled_engine, a, **greedy)
    run(pooled_engine, b, **greedy)
    extended = a + pooled_engine.tokenize(" more", special=False)
    assert run(pooled_engine, extended, **greedy)[-1].cached_tokens == len(a)


def test_a_shared_system_prompt_is_copied_and_the_first_session_kept(
    pooled_engine: Any, tiny_mlx_engine: Any
) -> None:
    system = "You are a careful coding agent. " * 6
    a = prompt_tokens(pooled_engine, system + "Session A edits the parser.")
    b = prompt_tokens(pooled_engine, system + "Session B writes release notes.")
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    greedy = {"max_tokens": 5, "temperature": 0, "ignore_eos": True}
    run(pooled_engine, a, **greedy)
    b_chunks = run(pooled_engine, b, **greedy)
    assert b_chunks[-1].cached_tokens == shared  # copied from A's cache, not evaluated
    tiny_mlx_engine.clear_cache()
    assert text_of(b_chunks) == text_of(run(tiny_mlx_engine, b, **greedy))  # same as cold
    a_more = a + pooled_engine.tokenize(" and its tests", special=False)
    assert run(pooled_engine, a_more, **greedy)[-1].cached_tokens == len(a)  # A kept


def test_a_request_joins_while_another_is_generating(pooled_engine: Any) -> None:
    assert pooled_engine.batched  # mlx-lm's BatchGenerator, not the serial lock
    finished: list[str] = []
    started = threading.Event()

    def long_one() -> None:
        params = SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)
        for chunk in pooled_engine.generate(prompt_tokens(pooled_engine, "long"), params):
            started.set()
            if chunk.finish_reason:
                finished.append(f"long:{chunk.finish_reason}")

    thread = threading.Thread(target=long_one)
    thread.start()
    assert started.wait(timeout=60)
    final = run(pooled_engine, prompt_tokens(pooled_engine, "short"), max_tokens=4, ignore_eos=True)
    finished.append(f"short:{final[-1].finish_reason}")
    thread.join(timeout=120)
    assert finished == ["short:length", "long:length"]


def test_a_quantized_cache_generates_serially(q8_engine: Any) -> None:
    assert not q8_engine.batched


def test_the_server_reports_mlx_logprobs_to_the_openai_client(tiny_mlx_dir: Path) -> None:
    import math

    import openai

    from impetus_cli.runtime.manager import ModelManager
    from tests.fixtures.servers import Registry, server_settings, start_server

    settings = server_settings()
    manager = ModelManager(settings, store=Registry({"tiny-mlx": tiny_mlx_dir}), allow_paths=False)
    with start_server(manager, settings) as url:
        api = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        ask: dict[str, Any] = {"max_tokens": 5, "temperature": 0, "logprobs": True}
        messages = [{"role": "user", "content": "hello"}]
        reply = api.chat.completions.create(
            model="tiny-mlx", messages=messages, top_logprobs=2, **ask
        )
        content = reply.choices[0].logprobs.content
        assert "".join(e.token for e in content) == reply.choices[0].message.content
        assert len(content) == reply.usage.completion_tokens
        for e in content:
            assert e.top_logprobs[0].token == e.token and len(e.top_logprobs) == 2
            assert math.isclose(e.top_logprobs[0].logprob, e.logprob, rel_tol=1e-5)
        stream = api.completions.create(
            model="tiny-mlx", prompt="def", max_tokens=5, temperature=0, logprobs=1, stream=True
        )
        parts = [c.choices[0] for c in stream if c.choices and c.choices[0].logprobs]
        assert "".join(t for p in parts for t in p.logprobs.tokens) == "".join(
            p.text for p in parts
        )
