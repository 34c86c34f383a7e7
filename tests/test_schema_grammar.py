"""JSON-schema response formats within bounds (issue 13 §2): the schema that crashed the server
(``maxLength: 50000``) and the one that built a 50 MB grammar (``minLength: 10**7``) are a 400
now, the server keeps answering, the largest schemas within the bounds still compile in
llama.cpp, and a normal schema still constrains what the model writes."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.grammar import grammar_for
from impetus_cli.runtime.json_grammar import LIMITS
from impetus_cli.runtime.types import SamplingParams


def fmt(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


def refused(schema: Any, match: str) -> None:
    with pytest.raises(ImpetusError, match=match) as err:
        grammar_for(fmt(schema))
    assert err.value.status == 400 and err.value.param == "response_format"


def test_the_schemas_that_crashed_or_bloated_the_server_are_refused() -> None:
    refused(
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": 50000}}},
        "maxLength 50000",
    )
    refused({"type": "string", "minLength": 10**7}, "minLength 10000000")
    refused({"type": "array", "items": {"type": "integer"}, "maxItems": 100_000}, "maxItems")


def test_every_bound_has_a_clear_400() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(LIMITS.depth + 2):
        deep = {"type": "array", "items": deep}
    refused(deep, "nests deeper")
    wide = {
        "type": "object",
        "properties": {f"p{i}": {"type": "integer"} for i in range(LIMITS.properties + 1)},
    }
    refused(wide, "more than 1000 properties")
    refused({"enum": ["x" * 10_000 for _ in range(60)]}, "grammar of")
    refused({"type": "string", "minLength": 5, "maxLength": 2}, "maxLength is smaller")
    refused({"type": "string", "maxLength": -1}, "non-negative")
    refused({"$ref": "#/$defs/missing"}, "does not point")


def test_the_largest_schemas_within_bounds_compile_in_llama_cpp(tiny_gguf_engine: Any) -> None:
    strings = {"type": "string", "minLength": LIMITS.length, "maxLength": LIMITS.length}
    for schema in (
        strings,
        {"type": "array", "items": strings, "minItems": LIMITS.items, "maxItems": LIMITS.items},
        {"type": "array", "items": {"type": "array", "items": strings, "maxItems": LIMITS.items}},
        {
            "type": "object",
            "properties": {f"p{i}": {"type": "integer"} for i in range(LIMITS.properties)},
        },
    ):
        out = list(
            tiny_gguf_engine.generate(
                [1, 2, 3], SamplingParams(max_tokens=2, grammar=grammar_for(fmt(schema)))
            )
        )
        assert out[-1].finish_reason == "length"


SCHEMA = {
    "type": "object",
    "properties": {
        "language": {"type": "string", "enum": ["python", "go"]},
        "lines": {"type": "integer"},
        "tested": {"type": "boolean"},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1, "maxItems": 3},
        "owner": {"anyOf": [{"$ref": "#/$defs/person"}, {"type": "null"}]},
        "note": {"type": "string", "maxLength": 8, "nullable": True},
    },
    "required": ["language", "lines", "tested", "tags", "owner", "note"],
    "$defs": {
        "tag": {"type": "string", "enum": ["api", "cli", "tui"]},
        "person": {
            "type": "object",
            "properties": {"name": {"const": "ada"}, "admin": {"type": "boolean"}},
            "required": ["name", "admin"],
        },
    },
}


def conforms(value: Any) -> bool:
    owner = value["owner"]
    note = value["note"]
    return (
        set(value) == set(SCHEMA["required"])  # type: ignore[arg-type]
        and value["language"] in ("python", "go")
        and isinstance(value["lines"], int)
        and isinstance(value["tested"], bool)
        and 1 <= len(value["tags"]) <= 3
        and set(value["tags"]) <= {"api", "cli", "tui"}
        and (owner is None or (owner["name"] == "ada" and isinstance(owner["admin"], bool)))
        and (note is None or (isinstance(note, str) and len(note) <= 8))
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_normal_schema_still_constrains_what_the_model_writes(
    tiny_gguf_engine: Any, seed: int
) -> None:
    grammar = grammar_for(fmt(SCHEMA))
    sampling = SamplingParams(max_tokens=400, temperature=0.9, seed=seed, grammar=grammar)
    chunks = list(tiny_gguf_engine.generate([1, 5, 9], sampling))
    assert chunks[-1].finish_reason == "stop"
    assert conforms(json.loads("".join(c.text for c in chunks)))


def test_the_server_answers_the_crashing_schema_with_a_400_and_keeps_serving(
    tiny_server: str,
) -> None:
    api = openai.OpenAI(base_url=tiny_server + "/v1", api_key="sk-x", max_retries=0)
    crashing = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 50000}}}
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            response_format=fmt(crashing),  # type: ignore[arg-type]
        )
    assert "maxLength 50000" in str(err.value)
    reply = api.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=300,
        temperature=0.9,
        seed=4,
        response_format=fmt(SCHEMA),  # type: ignore[arg-type]
    )
    assert conforms(json.loads(reply.choices[0].message.content or ""))


def test_a_clients_own_grammar_is_bounded_and_token_references_are_refused() -> None:
    from impetus_cli.runtime.grammar import JSON_OBJECT, user_grammar
    from impetus_cli.runtime.tool_grammar import tool_call_grammar
    from impetus_cli.runtime.types import ToolSpec

    # Token references made llama.cpp abort the process on the tiny model (a sampled token
    # that did not fit): refused before llama.cpp sees them.
    for bad in ('root ::= <[4]> "ok"', 'root ::= <|im_end|> "x"', 'root ::= "a" <think>'):
        with pytest.raises(ImpetusError, match="Token references") as err:
            user_grammar(bad)
        assert err.value.param == "grammar"
    with pytest.raises(ImpetusError, match="larger than"):
        user_grammar('root ::= "' + "x" * 600_000 + '"')
    # '<' inside literals, classes and comments is text, as in every grammar we write.
    tool = ToolSpec("f", "", {"type": "object", "properties": {"a": {"type": "string"}}})
    ours = [JSON_OBJECT, grammar_for(fmt(SCHEMA)) or ""] + [
        tool_call_grammar(d, [tool], "required", parallel=True)
        for d in (
            "hermes",
            "qwen3-coder",
            "glm",
            "harmony",
            "deepseek",
            "kimi",
            "mistral",
            "llama3",
        )
    ]
    for grammar in [*ours, 'root ::= "<a>" [<>] # a <comment>\n']:
        assert user_grammar(grammar) == grammar
