"""The GGUF engine on real llama.cpp: the tiny random-weight GGUF for mechanics, the real
Gemma 3 270M for chat, grammars and embeddings. Counters come from the engine itself."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.errors import ContextLengthExceeded, CorruptModel
from impetus_cli.runtime.inspect import inspect_model
from impetus_cli.runtime.types import ChatMessage, Dry, GenerationChunk, SamplingParams
from tests.fixtures.tiny_models import make_plan, write_tiny_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
# Gemma evaluating thousands of prompt tokens on two shared cores: minutes when they are busy
# (the suite's 300 s guards against hangs, not against a slow machine).
LONG_PROMPTS = pytest.mark.timeout(900)


def chat_tokens(engine: Any, text: str) -> list[int]:
    return list(engine.tokenize(engine.render([ChatMessage(role="user", content=text)])))


def run(engine: Any, tokens: list[int], sampling: SamplingParams = GREEDY) -> list[GenerationChunk]:
    return list(engine.generate(tokens, sampling))


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


# How far a warm reply's logprobs may stray from a cold evaluation's. llama.cpp's rounding
# moves a Gemma logprob by up to ~0.1 between two splits of the same prompt into micro-batches
# (0.08 to 0.12 on the first token of the replies below), and a later token of the reply, fed
# one at a time where the cold run evaluates it in one batch, by up to 0.31 (one step of the
# checkpoint follow-up below, on an AMD EPYC; 0.07 on average over its 16 steps). A window cache
# missing 16 of its 512 positions moves it by 0.46 there, and every step after it; a checkpoint
# restored at the wrong position fails in llama.cpp itself.
GAP, DRIFT, MEAN_DRIFT = 0.5, 0.4, 0.15


def assert_replies_as_a_cold_evaluation(
    chunks: list[GenerationChunk], cold: Any, prompt: list[int]
) -> None:
    """The greedy reply a warm engine gave (from a reused, copied or restored cache) is one a
    cold evaluation of the same prompt gives, up to llama.cpp's rounding: at every step, the
    cold engine, shown the prompt and the reply so far, ranks the warm pick within GAP of its
    best token and gives it the logprob the warm engine reported, within DRIFT, and within
    MEAN_DRIFT on average.

    Not the same text: llama.cpp's results depend on how a prompt is split into micro-batches
    and on where its cells sit in the KV cache, so where the base model hesitates between two
    tokens, the warm and the cold engine may each pick another."""
    ids = [t for c in chunks for t in c.token_ids]
    warm = [lp for c in chunks for lp in c.logprobs]
    assert ids and len(warm) == len(ids), "ask the warm run for logprobs"
    ask = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, logprobs=5)
    drifts: list[float] = []
    for i, (token, logprob) in enumerate(zip(ids, warm, strict=True)):
        (top,) = [t for c in run(cold, prompt + ids[:i], ask) for t in c.top_logprobs]
        cold_logprob = dict(top).get(token)
        assert cold_logprob is not None and top[0][1] - cold_logprob <= GAP, (i, token, top)
        drifts.append(abs(cold_logprob - logprob))
        assert drifts[-1] <= DRIFT, (i, token, logprob, cold_logprob)
    assert sum(drifts) / len(drifts) <= MEAN_DRIFT, drifts


def load(path: Path, **plan: Any) -> Any:
    from impetus_cli.runtime.engines.llama import LlamaEngine

    info = inspect_model(path)
    return LlamaEngine.load(make_plan(path, info, **plan), info)


# -- streaming and finishing ----------------------------------------------------------------


def test_stream_carries_every_token_once_then_final_counters(tiny_gguf_engine: Any) -> None:
    chunks = run(tiny_gguf_engine, chat_tokens(tiny_gguf_engine, "hello"))
    final = chunks[-1]
    assert final.finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])
    ids = [t for c in chunks for t in c.token_ids]
    assert len(ids) == final.completion_tokens == 16
    assert final.prompt_tokens == len(chat_tokens(tiny_gguf_engine, "hello"))
    assert final.ttft_s > 0 and final.prompt_tps > 0


def test_an_end_of_generation_token_finishes_with_stop(tiny_gguf_engine: Any) -> None:
    eos = tiny_gguf_engine.special_tokens["eos"]
    params = SamplingParams(max_tokens=16, temperature=0, logit_bias={eos: 100.0})
    chunks = run(tiny_gguf_engine, chat_tokens(tiny_gguf_engine, "bye"), params)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 0
    assert text_of(chunks) == ""


def test_logit_bias_and_penalties_steer_the_c_sampler(tiny_gguf_engine: Any) -> None:
    the = tiny_gguf_engine.tokenize("the", special=False)[-1]
    tokens = chat_tokens(tiny_gguf_engine, "bias")
    biased = SamplingParams(max_tokens=6, temperature=0, logit_bias={the: 50.0})
    assert text_of(run(tiny_gguf_engine, tokens, biased)) == " the" * 6
    # A repeat penalty large enough to outweigh the bias stops the repetition.
    penalised = SamplingParams(
        max_tokens=6, temperature=0, logit_bias={the: 5.0}, repeat_penalty=1e6
    )
    assert text_of(run(tiny_gguf_engine, tokens, penalised)).count(" the") <= 1


def test_dry_stops_a_repeat_that_a_bias_would_keep(tiny_gguf_engine: Any) -> None:
    the = tiny_gguf_engine.tokenize("the", special=False)[-1]
    tokens = chat_tokens(tiny_gguf_engine, "dry")
    looping = SamplingParams(max_tokens=12, temperature=0, logit_bias={the: 20.0})
    assert text_of(run(tiny_gguf_engine, tokens, looping)) == " the" * 12
    # DRY's penalty grows with the repeat's length until it outweighs the bias.
    dry = SamplingParams(
        max_tokens=12, temperature=0, logit_bias={the: 20.0}, dry=Dry(multiplier=5.0)
    )
    assert text_of(run(tiny_gguf_engine, tokens, dry)).count(" the") < 12


def test_typical_sampling_narrows_the_choice(tiny_gguf_engine: Any) -> None:
    tokens = chat_tokens(tiny_gguf_engine, "typical")

    def sample(seed: int, typical_p: float) -> str:
        params = SamplingParams(
            max_tokens=24, temperature=1.5, top_k=0, min_p=0.0, seed=seed, typical_p=typical_p
        )
        return text_of(run(tiny_gguf_engine, tokens, params))

    assert sample(1, 1.0) != sample(2, 1.0)
    # Keeping only the most typical token leaves the seed nothing to choose.
    assert sample(1, 1e-6) == sample(2, 1e-6)


def test_running_out_of_context_ends_with_length(tiny_gguf_engine: Any) -> None:
    n_ctx = tiny_gguf_engine.n_ctx
    prompt = tiny_gguf_engine.tokenize("the " * n_ctx)[: n_ctx - 10]
    no_limit = SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
    final = run(tiny_gguf_engine, prompt, no_limit)[-1]
    assert final.finish_reason == "length" and final.completion_tokens == 10


def test_a_prompt_longer_than_the_context_is_refused(tiny_gguf_engine: Any) -> None:
    with pytest.raises(ContextLengthExceeded):
        run(tiny_gguf_engine, [1] * (tiny_gguf_engine.n_ctx + 1))


def test_seeds_repeat_and_differ(tiny_gguf_engine: Any) -> None:
    tokens = chat_tokens(tiny_gguf_engine, "seeded")

    def sample(seed: int) -> str:
        params = SamplingParams(max_tokens=24, temperature=1.5, top_k=0, min_p=0.0, seed=seed)
        return text_of(run(tiny_gguf_engine, tokens, params))

    assert sample(1) == sample(1) and sample(1) != sample(2)
    assert text_of(run(tiny_gguf_engine, tokens)) == text_of(run(tiny_gguf_engine, tokens))


def test_multibyte_characters_split_over_byte_tokens_decode_whole(tiny_gguf_engine: Any) -> None:
    # The tiny vocabulary has no piece for these characters: they come out as byte tokens.
    want = "café ünïcødé 日本"
    grammar = f'root ::= "{want}"'
    chunks = run(
        tiny_gguf_engine,
        chat_tokens(tiny_gguf_engine, "x"),
        SamplingParams(max_tokens=40, temperature=0, grammar=grammar),
    )
    assert text_of(chunks) == want and chunks[-1].finish_reason == "stop"
    assert all("\ufffd" not in c.text for c in chunks)
    assert chunks[-1].completion_tokens > len(want.split())  # more tokens than pieces


def _pieces(engine: Any, tokens: list[int]) -> list[str]:
    return [
        c.text for c in run(engine, tokens, SamplingParams(max_tokens=30, temperature=0)) if c.text
    ]


def test_a_stop_string_across_a_token_boundary_is_cut_before_it(tiny_gguf_engine: Any) -> None:
    tokens = chat_tokens(tiny_gguf_engine, "stop here")
    pieces = _pieces(tiny_gguf_engine, tokens)
    full = "".join(pieces)
    i = next(i for i in range(len(pieces) - 1) if len(pieces[i]) > 1 and len(pieces[i + 1]) > 1)
    stop = pieces[i][-2:] + pieces[i + 1][:2]  # ends one token, starts the next
    chunks = run(
        tiny_gguf_engine, tokens, SamplingParams(max_tokens=30, temperature=0, stop=(stop,))
    )
    assert text_of(chunks) == full[: full.index(stop)] and chunks[-1].finish_reason == "stop"


def test_a_stop_string_that_never_completes_loses_no_text(tiny_gguf_engine: Any) -> None:
    tokens = chat_tokens(tiny_gguf_engine, "stop here")
    pieces = _pieces(tiny_gguf_engine, tokens)
    never = pieces[-1] + "\u2603never"  # its start is held back at the end, then released
    chunks = run(
        tiny_gguf_engine, tokens, SamplingParams(max_tokens=30, temperature=0, stop=(never,))
    )
    assert text_of(chunks) == "".join(pieces)


def test_cancellation_stops_within_one_token(tiny_gguf_engine: Any) -> None:
    cancel = threading.Event()
    seen, final = 0, None
    params = SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
    for chunk in tiny_gguf_engine.generate(chat_tokens(tiny_gguf_engine, "go"), params, cancel):
        seen += len(chunk.token_ids)
        if seen >= 3:
            cancel.set()
        final = chunk
    assert final is not None and final.finish_reason == "cancelled"
    assert final.completion_tokens <= 4


def test_two_threads_generating_at_once_both_finish(tiny_gguf_engine: Any) -> None:
    results: list[str | None] = [None, None]

    def work(i: int) -> None:
        chunks = run(tiny_gguf_engine, chat_tokens(tiny_gguf_engine, f"thread {i}"))
        results[i] = chunks[-1].finish_reason

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == ["length", "length"]


# -- prefix reuse -----------------------------------------------------------------------------


def test_an_extended_prompt_evaluates_only_its_new_tokens(tiny_gguf_engine: Any) -> None:
    first = chat_tokens(tiny_gguf_engine, "tell me about the quick brown fox")
    run(tiny_gguf_engine, first)
    second = first + tiny_gguf_engine.tokenize(" and the dog", special=False)
    final = run(tiny_gguf_engine, second)[-1]
    assert final.cached_tokens == len(first) == tiny_gguf_engine.last_cached_tokens
    assert tiny_gguf_engine.last_evaluated_tokens == len(second) - len(first)


def test_the_same_prompt_again_evaluates_one_token(tiny_gguf_engine: Any) -> None:
    tokens = chat_tokens(tiny_gguf_engine, "again and again")
    run(tiny_gguf_engine, tokens)
    final = run(tiny_gguf_engine, tokens)[-1]
    assert final.cached_tokens == len(tokens) - 1 and tiny_gguf_engine.last_evaluated_tokens == 1


def test_a_trimmed_cache_gives_the_same_text_as_a_cold_one(tiny_gguf: Path) -> None:
    warm, cold = load(tiny_gguf), load(tiny_gguf)
    try:
        base = chat_tokens(warm, "a shared beginning of a prompt")
        run(warm, base + warm.tokenize(" then one ending", special=False))
        other = base + warm.tokenize(" with another ending", special=False)
        warm_chunks = run(warm, other)
        assert warm_chunks[-1].cached_tokens >= len(base)
        assert text_of(warm_chunks) == text_of(run(cold, other))
    finally:
        warm.close()
        cold.close()


def test_two_conversations_on_two_slots_keep_their_own_prefixes(tiny_gguf: Path) -> None:
    engine = load(tiny_gguf, n_ctx=512, n_parallel=2)
    try:
        a = chat_tokens(engine, "conversation about apples and pears")
        b = engine.tokenize("a completely different document", special=False)
        run(engine, a)
        run(engine, b)
        final = run(engine, a + engine.tokenize(" more", special=False))[-1]
        assert final.cached_tokens == len(a) and engine.n_ctx == 512
    finally:
        engine.close()


def test_a_second_session_sharing_the_system_prompt_copies_it_and_keeps_the_first(
    tiny_gguf: Path,
) -> None:
    engine, cold = load(tiny_gguf, n_ctx=512, n_parallel=2), load(tiny_gguf, n_ctx=512)
    try:
        system = engine.tokenize(" ".join(["You are a careful coding agent."] * 8))
        a = system + engine.tokenize(" Session A edits the parser module today", special=False)
        b = system + engine.tokenize(" Session B writes the release notes", special=False)
        run(engine, a)
        b_chunks = run(engine, b)
        assert b_chunks[-1].cached_tokens >= len(system)  # copied from A's slot, not evaluated
        assert text_of(b_chunks) == text_of(run(cold, b))  # the copied cells are the right ones
        a_again = run(engine, a + engine.tokenize(" and its tests", special=False))[-1]
        assert a_again.cached_tokens == len(a)  # A's own slot was left alone
    finally:
        engine.close()
        cold.close()


@LONG_PROMPTS
def test_gemma_slots_trimmed_and_refilled_never_run_out_of_window_cells(gemma_gguf: Path) -> None:
    """Gemma's sliding-window cache holds each slot's window only: a follow-up that trims a
    long conversation's tail, beside another cached conversation, must keep decoding (shared
    prefix copies used to pin window cells until llama.cpp found no slot)."""
    engine = load(gemma_gguf, n_ctx=4096, n_parallel=4)
    try:
        words = engine.tokenize(
            " ".join(f"rule {i} keep it simple." for i in range(400)), special=False
        )
        greedy = SamplingParams(max_tokens=31, temperature=0, ignore_eos=True)
        run(engine, [2, *words[5:274]], greedy)  # another conversation in the cache
        first = [2, *words[:2214]]
        run(engine, first, greedy)
        follow = run(
            engine, first + words[2214:2240], SamplingParams(max_tokens=60, ignore_eos=True)
        )
        assert follow[-1].finish_reason == "length" and follow[-1].completion_tokens == 60
        assert follow[-1].cached_tokens >= len(first)
    finally:
        engine.close()


def sessions(engine: Any, rule: str, *tasks: str) -> tuple[list[int], list[list[int]]]:
    """A 600-token system prompt of numbered rules, and a session per task: the system prompt,
    then the task's text (its first 1500 tokens)."""
    words = engine.tokenize(" ".join(f"rule {i}: {rule}" for i in range(1500)), special=False)
    system = [2, *words[:600]]
    return system, [system + engine.tokenize(task, special=False)[:1500] for task in tasks]


GREEDY_8 = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=0)


@LONG_PROMPTS
def test_gemma_sessions_sharing_a_system_prompt_reuse_its_snapshot(gemma_gguf: Path) -> None:
    """On a sliding-window model a shared prefix cannot be copied between slots, and a session
    that moved on no longer holds the window at its end: the second session evaluates the
    system prompt and snapshots it there, the third loads the snapshot and answers as a cold
    evaluation would."""
    engine = load(gemma_gguf, n_ctx=4096, n_parallel=2, snapshot_bytes=200_000_000)
    cold = load(gemma_gguf, n_ctx=1024)
    try:
        system, (a, b, c) = sessions(
            engine,
            "keep functions short.",
            " Apples" + " and pears" * 900,
            " Bananas" + " or plums" * 900,
            " Cherries: which rule is first?",
        )
        run(engine, a, GREEDY_8)
        b_final = run(engine, b, GREEDY_8)[-1]
        snapshots = engine._slots.snapshots
        assert b_final.cached_tokens == 0  # A's window no longer reaches the system prompt
        assert [s.tokens for s in snapshots.items] == [system]
        c_chunks = run(engine, c, GREEDY_8)
        assert c_chunks[-1].cached_tokens == len(system)  # loaded, not evaluated
        assert_replies_as_a_cold_evaluation(c_chunks, cold, c)
        assert run(engine, c, GREEDY_8)[-1].cached_tokens == len(c) - 1  # C's own slot now
    finally:
        engine.close()
        cold.close()


@LONG_PROMPTS
def test_gemma_second_session_loads_the_instructions_the_first_one_saved(gemma_gguf: Path) -> None:
    """An agent's first session marks where its instructions end (prepare.instructions_end):
    the engine saves the sequence's state there while evaluating it, so the second session,
    on another slot once the first has moved past its window, loads the instructions instead of
    evaluating them and answers as a cold evaluation would."""
    engine = load(gemma_gguf, n_ctx=4096, n_parallel=2, snapshot_bytes=200_000_000)
    cold = load(gemma_gguf, n_ctx=1024)
    try:
        system, (a, b) = sessions(
            engine,
            "name things plainly.",
            " Apples" + " and pears" * 900,
            " Cherries: which rule is first?",
        )
        first = list(engine.generate(a, GREEDY_8, instructions=len(system)))
        assert first[-1].cached_tokens == 0
        assert [s.tokens for s in engine._slots.snapshots.items] == [system]
        second = list(engine.generate(b, GREEDY_8, instructions=len(system)))
        assert second[-1].cached_tokens == len(system)  # loaded, not evaluated
        assert_replies_as_a_cold_evaluation(second, cold, b)
        assert len(engine._slots.snapshots.items) == 1  # the same instructions: saved once
    finally:
        engine.close()
        cold.close()


def test_a_new_snapshot_outlasts_parked_sequences_when_the_room_is_short(tiny_gguf: Path) -> None:
    """Parking fills the free room; the snapshot a prompt takes next (the instructions a later
    session loads) is worth more, so parked sequences go back into the KV cache to make room
    for it, and nothing they held is lost."""
    from impetus_cli.runtime.engines.llama_snapshots import Snapshots

    engine = load(tiny_gguf, n_ctx=1024, n_parallel=2)
    try:
        a = engine.tokenize("alpha beta gamma " * 30)
        b = engine.tokenize("delta epsilon " * 30)
        run(engine, a)
        run(engine, b)
        a_seq, b_seq = (
            next(s.seq_id for s in engine._slots.all if s.tokens[:8] == p[:8]) for p in (a, b)
        )
        llama = engine._llama
        snapshots = Snapshots(llama, budget=10**9)
        assert snapshots.park(a_seq)
        assert int(llama.lib.llama_memory_seq_pos_max(llama.mem, a_seq)) == -1  # copied out
        size = int(llama.lib.llama_state_seq_get_size_ext(llama.ctx, b_seq, 0))
        snapshots.budget = snapshots.bytes + size - 1  # room for the snapshot, not for both
        snapshots.take(b_seq, engine._slots.all[b_seq].tokens)
        assert [s.tokens for s in snapshots.items] == [engine._slots.all[b_seq].tokens]
        assert not snapshots.parked and snapshots.bytes <= snapshots.budget
        held = engine._slots.all[a_seq].tokens
        assert int(llama.lib.llama_memory_seq_pos_max(llama.mem, a_seq)) == len(held) - 1
    finally:
        engine.close()


@LONG_PROMPTS
def test_gemma_follow_up_with_a_retokenized_reply_rolls_back_to_its_checkpoint(
    gemma_gguf: Path,
) -> None:
    """A follow-up whose replayed reply differs from the generated tokens shares the prompt
    only; once another conversation has reused the cells that fell out of the first one's
    window, only the window checkpoint taken near the end of its prompt avoids evaluating it
    all again, and the answer is one a cold evaluation gives."""
    engine = load(gemma_gguf, n_ctx=4096, n_parallel=2, snapshot_bytes=200_000_000)
    cold = load(gemma_gguf, n_ctx=2048)
    try:
        words = engine.tokenize(
            " ".join(f"note {i}: tests first." for i in range(1200)), special=False
        )
        a = [2, *words[:1500]]
        other = [2, *engine.tokenize(" Plums" + " and figs" * 1600, special=False)[:3000]]
        greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logprobs=0)
        run(engine, a, greedy)
        run(engine, other, greedy)  # the other slot; it takes the cells outside a's window
        follow = a + engine.tokenize(" (a reply sent back differently) and now?", special=False)
        chunks = run(engine, follow, greedy)
        assert chunks[-1].cached_tokens == len(a) - 4  # from the checkpoint, not from zero
        assert_replies_as_a_cold_evaluation(chunks, cold, follow)
    finally:
        engine.close()
        cold.close()


@LONG_PROMPTS
@pytest.mark.parametrize("room", ["for both", "for one", "for none"])
def test_gemma_idle_conversations_leave_the_kv_cache_while_a_long_prompt_evaluates(
    gemma_gguf: Path, room: str
) -> None:
    """Before a long prompt, idle conversations are parked out of the KV cache (so the prompt
    does not attend over their cells) when they fit in the snapshot room, and put back when
    they continue: the follow-up reuses its prefix and answers as a cold evaluation would. When
    the room fills up, a parked conversation goes back into the KV cache rather than lost."""
    engine = load(gemma_gguf, n_ctx=4096, n_parallel=3, snapshot_bytes=200_000_000)
    cold = load(gemma_gguf, n_ctx=2048)
    try:
        words = engine.tokenize(" ".join(f"step {i}: run it." for i in range(1200)), special=False)
        a = [2, *words[:1500]]
        b = [2, *engine.tokenize(" Figs" + " and dates" * 1000, special=False)[:1500]]
        c = [2, *engine.tokenize(" Kiwis" + " or limes" * 1000, special=False)[:1500]]
        greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logprobs=0)
        slots, llama = engine._slots, engine._llama
        snapshots = slots.snapshots
        run(engine, a, greedy)
        run(engine, b, greedy)  # a is parked: b's 1500 new tokens fill more than one batch
        a_seq = next(s.seq_id for s in slots.all if s.tokens[: len(a)] == a)
        assert list(snapshots.parked) == [a_seq]
        assert llama.lib.llama_memory_seq_pos_max(llama.mem, a_seq) == -1  # no cells left
        # c's turn: room to park b and take c's window checkpoint, for the checkpoint only
        # (b stays), or for neither (the checkpoint pushes a back into the KV cache)
        checkpoint = len(snapshots.checkpoints[a_seq].data)
        snapshots.budget = {"for both": 200_000_000, "for one": snapshots.bytes + checkpoint}.get(
            room, snapshots.bytes
        )
        run(engine, c, greedy)
        assert len(snapshots.parked) == {"for both": 2, "for one": 1}.get(room, 0)
        assert snapshots.bytes <= snapshots.budget
        follow = a + engine.tokenize(" Which step comes first?", special=False)
        chunks = run(engine, follow, greedy)
        assert chunks[-1].cached_tokens >= len(a) - 4  # a's own prefix, not evaluated again
        assert_replies_as_a_cold_evaluation(chunks, cold, follow)
    finally:
        engine.close()
        cold.close()


# The prompt cache (RAM and disk tiers behind the KV cache): tests/test_prompt_cache.py.


# -- continuous batching ----------------------------------------------------------------------


def test_a_request_joins_while_another_is_generating(tiny_gguf: Path) -> None:
    engine = load(tiny_gguf, n_ctx=2048, n_parallel=2)
    finished: list[str] = []
    started = threading.Event()

    def long_one() -> None:
        params = SamplingParams(max_tokens=1900, temperature=0, ignore_eos=True)
        for chunk in engine.generate(chat_tokens(engine, "a long story"), params):
            started.set()
            if chunk.finish_reason:
                finished.append(f"long:{chunk.finish_reason}")

    try:
        thread = threading.Thread(target=long_one)
        thread.start()
        assert started.wait(timeout=60)
        final = run(engine, chat_tokens(engine, "a short answer"))[-1]
        finished.append(f"short:{final.finish_reason}")
        thread.join(timeout=120)
        # The short request ran beside the long one instead of queueing behind it.
        assert finished == ["short:length", "long:length"]
    finally:
        engine.close()


def test_a_slot_is_free_again_when_its_consumer_stops_reading(tiny_gguf: Path) -> None:
    engine = load(tiny_gguf, n_ctx=2048, n_parallel=1)
    try:
        params = SamplingParams(max_tokens=1500, temperature=0, ignore_eos=True)
        stream = engine.generate(chat_tokens(engine, "never read to the end"), params)
        next(stream)
        stream.close()  # what a client hanging up does through the server
        final = run(engine, chat_tokens(engine, "next one"))[-1]
        assert final.finish_reason == "length" and final.completion_tokens == 16
    finally:
        engine.close()


def test_closing_the_engine_ends_a_running_generation_with_an_error(tiny_gguf: Path) -> None:
    from impetus_cli.errors import EngineError

    engine = load(tiny_gguf, n_ctx=2048, n_parallel=1)
    params = SamplingParams(max_tokens=1900, temperature=0, ignore_eos=True)
    stream = engine.generate(chat_tokens(engine, "interrupted"), params)
    next(stream)
    engine.close()
    with pytest.raises(EngineError, match="unloaded"):
        for _ in stream:
            pass


def test_a_failure_after_a_decode_clears_its_sequence_and_the_engine_serves_again(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in the decode thread after llama_decode wrote the running sequence's cells:
    the running and the waiting request end with an EngineError, the failed sequence's cells
    are cleared (the next prompt reuses none of them), and the next request answers as before."""
    from impetus_cli.errors import EngineError

    engine = load(tiny_gguf, n_ctx=512, n_parallel=1)
    try:
        prompt = chat_tokens(engine, "the same question")
        before = text_of(run(engine, prompt))
        scheduler, raised = engine._scheduler, []
        real_sample = scheduler._sample

        def sample(r: Any, index: int) -> None:
            if not raised and scheduler._waiting:  # once the second request waits for the slot
                raised.append(True)
                raise RuntimeError("injected failure")
            real_sample(r, index)

        monkeypatch.setattr(scheduler, "_sample", sample)
        long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
        first = engine.generate(prompt + engine.tokenize(" and more", special=False), long)
        next(first)
        waited: list[BaseException | str | None] = []

        def wait_for_the_slot() -> None:
            try:
                waited.append(run(engine, prompt, long)[-1].finish_reason)
            except EngineError as exc:
                waited.append(exc)

        thread = threading.Thread(target=wait_for_the_slot)
        thread.start()
        with pytest.raises(EngineError, match="injected failure"):
            list(first)
        thread.join(timeout=120)
        assert len(waited) == 1 and "injected failure" in str(waited[0])
        assert engine.failure is not None and "injected failure" in engine.failure
        after = run(engine, prompt)
        assert after[-1].cached_tokens == 0 and text_of(after) == before
        assert engine.failure is None
    finally:
        engine.close()


def test_logprobs_are_a_distribution_and_the_greedy_pick_is_the_best(
    tiny_gguf_engine: Any,
) -> None:
    import math

    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=3)
    chunks = run(tiny_gguf_engine, chat_tokens(tiny_gguf_engine, "probabilities"), params)
    ids = [t for c in chunks for t in c.token_ids]
    logprobs = [lp for c in chunks for lp in c.logprobs]
    tops = [t for c in chunks for t in c.top_logprobs]
    assert len(ids) == len(logprobs) == len(tops) == 8
    for token, lp, top in zip(ids, logprobs, tops, strict=True):
        assert lp <= 0 and len(top) == 3
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
        assert top[0][0] == token and math.isclose(top[0][1], lp)
        assert sum(math.exp(p) for _, p in top) <= 1.0 + 1e-6


# -- loading, tokens, memory -------------------------------------------------------------------


def test_bos_is_not_doubled_when_the_text_starts_with_it(tiny_gguf_engine: Any) -> None:
    bos = tiny_gguf_engine.special_tokens["bos"]
    assert tiny_gguf_engine.tokenize("hello")[0] == bos
    assert tiny_gguf_engine.tokenize("<s>hello") == tiny_gguf_engine.tokenize("hello")


def test_memory_covers_weights_and_kv_cache(tiny_gguf_engine: Any) -> None:
    kv = tiny_gguf_engine.info.kv_bytes_per_token() * tiny_gguf_engine.n_ctx
    assert tiny_gguf_engine.memory_bytes >= kv + tiny_gguf_engine.info.file_bytes // 2


@pytest.mark.parametrize(("n_head", "n_kv"), [(2, 1), (4, 2)])
def test_a_quantized_kv_cache_loads_and_generates(tmp_path: Path, n_head: int, n_kv: int) -> None:
    # head size 32 takes q8_0 blocks; head size 16 cannot, and falls back to f16.
    path = write_tiny_gguf(tmp_path / "kv.gguf", n_head=n_head, n_kv=n_kv)
    engine = load(path, kv_type="q8_0", n_ctx=512)
    try:
        assert run(engine, chat_tokens(engine, "hi"))[-1].completion_tokens == 16
    finally:
        engine.close()


def test_a_gguf_with_missing_tensor_data_fails_to_load_clearly(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "cut.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, weights cut short
    with pytest.raises(CorruptModel, match="could not load") as err:
        load(path)
    assert err.value.hint and "pull it again" in err.value.hint


def test_embeddings_are_normalised_and_sized_like_the_hidden_state(
    tiny_gguf_engine: Any,
) -> None:
    vectors = tiny_gguf_engine.embed(["hello world", "something else entirely"])
    assert [len(v) for v in vectors] == [64, 64] and vectors[0] != vectors[1]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)


# -- Gemma 3 270M ---------------------------------------------------------------------------


def test_gemma_chat_through_render_replies(gemma_engine: Any) -> None:
    prompt = gemma_engine.render([ChatMessage(role="user", content="Say hello to me.")])
    assert "<start_of_turn>model\n" in prompt
    chunks = run(
        gemma_engine, gemma_engine.tokenize(prompt), SamplingParams(max_tokens=24, temperature=0)
    )
    reply = text_of(chunks)
    assert reply.strip() and "<end_of_turn>" not in reply


def test_gemma_output_under_a_grammar_parses_as_json(gemma_engine: Any) -> None:
    grammar = r"""
root ::= "{" ws "\"name\"" ws ":" ws name ws "," ws "\"legs\"" ws ":" ws legs ws "}"
name ::= "\"" [a-zA-Z ]{1,24} "\""
legs ::= [0-9]{1,2}
ws   ::= [ \n]{0,4}
"""
    tokens = chat_tokens(gemma_engine, "Describe a cat as JSON with its name and number of legs.")
    chunks = run(
        gemma_engine, tokens, SamplingParams(max_tokens=60, temperature=0, grammar=grammar)
    )
    data = json.loads(text_of(chunks))
    assert set(data) == {"name", "legs"} and chunks[-1].finish_reason == "stop"


def test_gemma_embeddings_have_its_hidden_size(gemma_engine: Any) -> None:
    (vector,) = gemma_engine.embed(["a sentence to embed"])
    assert len(vector) == 640 and abs(sum(x * x for x in vector) - 1) < 1e-4
