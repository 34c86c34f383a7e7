"""Both engines through the same protocol, on real llama.cpp and real mlx-lm."""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.errors import ContextLengthExceeded, EngineError, ImpetusError
from impetus_cli.runtime.types import (
    ChatMessage,
    ChatRequest,
    GenerationChunk,
    SamplingParams,
    SpecialText,
)
from tests.fixtures.tiny_models import CHATML

ENGINES = ["tiny_gguf_engine", "tiny_mlx_engine"]
FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Any:
    if request.param == "tiny_gguf_engine":
        pytest.importorskip("llama_cpp")
    return request.getfixturevalue(request.param)


def run(engine: Any, text: str, **sampling: Any) -> list[GenerationChunk]:
    tokens = engine.tokenize(engine.render([ChatMessage(role="user", content=text)]))
    return list(engine.generate(tokens, SamplingParams(**sampling)))


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def test_stream_is_text_then_one_final_chunk_with_counters(engine: Any) -> None:
    chunks = run(engine, "hello", max_tokens=12, temperature=0)
    final = chunks[-1]
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert final.finish_reason in ("stop", "length") and final.prompt_tokens > 0
    assert final.completion_tokens <= 12 and final.generation_tps >= 0 and final.ttft_s > 0


def test_max_tokens_ends_with_length(engine: Any) -> None:
    chunks = run(engine, "hello", max_tokens=3, temperature=0, ignore_eos=True)
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 3


def test_temperature_zero_is_deterministic(engine: Any) -> None:
    assert text_of(run(engine, "the same", max_tokens=16, temperature=0)) == text_of(
        run(engine, "the same", max_tokens=16, temperature=0)
    )


def test_the_same_seed_gives_the_same_text(engine: Any) -> None:
    a = text_of(run(engine, "seeded", max_tokens=24, temperature=1.0, seed=7, ignore_eos=True))
    b = text_of(run(engine, "seeded", max_tokens=24, temperature=1.0, seed=7, ignore_eos=True))
    c = text_of(run(engine, "seeded", max_tokens=24, temperature=1.0, seed=8, ignore_eos=True))
    assert a == b and a != c


def test_a_stop_string_split_across_tokens_is_never_emitted(engine: Any) -> None:
    full = text_of(run(engine, "stop test", max_tokens=40, temperature=0, ignore_eos=True))
    stop = full[3:9]  # a string the model will produce, likely spanning tokens
    assert len(stop) == 6, f"the model produced too little text: {full!r}"
    chunks = run(engine, "stop test", max_tokens=40, temperature=0, ignore_eos=True, stop=(stop,))
    out = text_of(chunks)
    assert stop not in out and full.startswith(out) and chunks[-1].finish_reason == "stop"


def test_cancellation_stops_within_a_token(engine: Any) -> None:
    cancel = threading.Event()
    tokens = engine.tokenize(engine.render([ChatMessage(role="user", content="go")]))
    seen = 0
    final = None
    for chunk in engine.generate(
        tokens, SamplingParams(max_tokens=500, temperature=0, ignore_eos=True), cancel
    ):
        if chunk.finish_reason:
            final = chunk
        elif chunk.token_ids:
            seen += 1
            if seen == 3:
                cancel.set()
    assert final is not None and final.finish_reason == "cancelled" and final.completion_tokens <= 4


def test_a_follow_up_evaluates_only_its_new_tokens(engine: Any) -> None:
    first = [ChatMessage(role="user", content="tell me about the quick brown fox")]
    tokens1 = engine.tokenize(engine.render(first))
    reply = text_of(list(engine.generate(tokens1, SamplingParams(max_tokens=8, temperature=0))))
    turn2 = [
        *first,
        ChatMessage(role="assistant", content=reply),
        ChatMessage(role="user", content="and the dog?"),
    ]
    tokens2 = engine.tokenize(engine.render(turn2))
    final = list(engine.generate(tokens2, SamplingParams(max_tokens=4, temperature=0)))[-1]
    assert final.cached_tokens >= len(tokens1) - 1
    assert engine.last_evaluated_tokens == len(tokens2) - final.cached_tokens


def test_embeddings_are_normalised_vectors_of_the_hidden_size(engine: Any) -> None:
    vectors = engine.embed(["hello world", "something else"])
    assert len(vectors) == 2 and len(vectors[0]) == 64
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-3 and vectors[0] != vectors[1]


def test_grammar_constrains_gguf_output_to_json(gemma_engine: Any) -> None:
    from impetus_cli.runtime.grammar import JSON_OBJECT

    tokens = gemma_engine.tokenize(
        gemma_engine.render([ChatMessage(role="user", content="Give a JSON object for a cat.")])
    )
    text = text_of(
        list(
            gemma_engine.generate(
                tokens, SamplingParams(max_tokens=60, temperature=0, grammar=JSON_OBJECT)
            )
        )
    )
    assert text.lstrip().startswith("{")


def test_mlx_refuses_grammar_clearly(tiny_mlx_engine: Any) -> None:
    with pytest.raises(ImpetusError, match="not available for MLX"):
        list(tiny_mlx_engine.generate([1, 2, 3], SamplingParams(grammar='root ::= "x"')))


def test_gemma_chat_follows_its_turn_format_and_replies(gemma_engine: Any) -> None:
    prompt = gemma_engine.render(
        [
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Say hello."),
        ]
    )
    assert prompt.startswith(
        "<bos><start_of_turn>user\nBe brief.\n\nSay hello.<end_of_turn>\n<start_of_turn>model\n"
    )
    chunks = list(
        gemma_engine.generate(
            gemma_engine.tokenize(prompt), SamplingParams(max_tokens=20, temperature=0)
        )
    )
    assert text_of(chunks).strip()
    assert gemma_engine.tokenize(prompt).count(2) == 1  # BOS once, though the template writes it


# -- what callers use through the protocol ----------------------------------------------------


def test_special_text_and_template_are_the_models_own(
    engine: Any, request: pytest.FixtureRequest
) -> None:
    # The tiny GGUF declares BOS; the tiny MLX tokenizer has none, and ends turns with <|im_end|>.
    bos, eos = ("<s>", "</s>") if "gguf" in request.node.callspec.id else ("", "<|im_end|>")
    assert engine.special_text == SpecialText(bos, eos, *FIM)
    assert engine.special_text.has_fim
    for text in FIM:  # each names one control token, not text that tokenizes into pieces
        assert len(engine.tokenize(text, special=False)) > 1
        assert len(engine.tokenize(text)) == len(engine.tokenize("")) + 1
    assert engine.chat_template == CHATML


def test_token_bytes_add_up_to_the_decoded_text(engine: Any) -> None:
    ids = engine.tokenize("hello world, the quick fox", special=False)
    assert b"".join(engine.token_bytes(t) for t in ids).decode() == engine.detokenize(ids)


def test_a_prompt_filling_the_context_is_refused_and_one_token_short_gets_one_token(
    engine: Any,
) -> None:
    with pytest.raises(ContextLengthExceeded):
        engine.generate([5] * engine.n_ctx, SamplingParams())
    final = list(
        engine.generate([5] * (engine.n_ctx - 1), SamplingParams(temperature=0, ignore_eos=True))
    )[-1]
    assert final.finish_reason == "length" and final.completion_tokens == 1


# -- a decode thread that cannot die -----------------------------------------------------------


def test_a_failing_step_ends_every_request_it_holds_and_the_next_one_is_served(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first step that runs once a second request has arrived (waiting for the one slot
    on llama.cpp, batched beside the first on MLX) raises: both consumers get an EngineError
    instead of waiting forever, /health's failure says why, and the engine serves again."""
    worker = engine._scheduler if hasattr(engine, "_scheduler") else engine._batcher
    real_step, raised = worker._step, []

    def step() -> None:
        if not raised and len(worker._held()) + len(worker._waiting) >= 2:
            raised.append(True)
            raise RuntimeError("injected failure")
        real_step()

    monkeypatch.setattr(worker, "_step", step)
    long = SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
    first = engine.generate(engine.tokenize("the first request"), long)
    assert next(first).text is not None  # it is generating
    second: list[BaseException | str] = []

    def read_second() -> None:
        try:
            second.append(list(engine.generate(engine.tokenize("the second"), long))[-1].text)
        except EngineError as exc:
            second.append(exc)

    thread = threading.Thread(target=read_second)
    thread.start()
    with pytest.raises(EngineError, match="injected failure") as err:
        list(first)
    thread.join(timeout=120)
    assert err.value.status == 500 and err.value.hint
    assert len(second) == 1 and isinstance(second[0], EngineError)
    assert engine.failure is not None and "injected failure" in engine.failure
    final = run(engine, "after the failure", max_tokens=3, temperature=0, ignore_eos=True)[-1]
    assert final.finish_reason == "length" and final.completion_tokens == 3
    assert engine.failure is None


# -- module structure ---------------------------------------------------------------------------


def test_no_engines_module_imports_one_that_imports_it_back() -> None:
    """Two modules that import each other are one idea split badly (STYLE.md): the engines
    package has no import cycle, counting the imports made inside functions."""
    from impetus_cli.runtime import engines

    package, prefix = Path(engines.__file__).parent, "impetus_cli.runtime.engines"
    modules = {p.stem: p for p in package.glob("*.py")}

    def name(stem: str) -> str:
        return prefix if stem == "__init__" else f"{prefix}.{stem}"

    graph: dict[str, set[str]] = {}
    for stem, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                subs = [f"{prefix}.{a.name}" for a in node.names if a.name in modules]
                found.update(subs if node.module == prefix and subs else [node.module])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name(stem)] = {m for m in found if m == prefix or m.startswith(prefix + ".")}

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                found = cycle_from(start, [*path, nxt])
                if found:
                    return found
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, [m]))]
    assert cycles == []
    assert {f"{prefix}.common", f"{prefix}.worker"} <= set(graph)  # the shared pieces exist


@pytest.mark.parametrize("name", ["gemma_engine", "tiny_gguf_engine"])
def test_a_chat_marks_where_its_instructions_end(request: pytest.FixtureRequest, name: str) -> None:
    """instructions_end finds the end of the system prompt in the rendered prompt, whichever way
    the template renders it (Gemma folds it into the first user turn, ChatML gives it a turn of
    its own): two sessions with the same instructions share exactly the tokens before that mark.
    prepare_chat looks for it only for an engine that saves a state there (these two, loaded
    without snapshot room, do not)."""
    pytest.importorskip("llama_cpp")
    from impetus_cli.runtime.engines.common import common_prefix
    from impetus_cli.runtime.prepare import instructions_end, prepare_chat

    engine = request.getfixturevalue(name)
    rules = "You are a careful coding agent. Read before you edit; run the tests after."
    system = ChatMessage(role="system", content=rules)

    def marked(*messages: ChatMessage) -> tuple[list[int], int]:
        chat = ChatRequest(model="m", messages=messages)
        job = prepare_chat(engine, chat, 64)
        assert not engine.saves_instructions and job.instructions == 0
        return job.tokens, instructions_end(engine, chat, engine.render(messages), job.tokens)

    one, n = marked(system, ChatMessage(role="user", content="Fix the bug in parser.py."))
    two, n_two = marked(system, ChatMessage(role="user", content="Why does test_io fail?"))
    assert n == n_two and 0 < n < len(one)
    assert one[:n] == two[:n] and common_prefix(one, two) == n
    assert rules in engine.detokenize(one[:n])
    assert marked(ChatMessage(role="user", content=rules))[1] == 0
