"""Forced tool choice: for every dialect, llama.cpp compiles the grammar, and the tiny GGUF model
constrained by it writes text that the dialect's parser turns into a valid call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.replies import reply_parser, tool_dialect
from impetus_cli.runtime.tool_grammar import tool_call_grammar
from impetus_cli.runtime.types import SamplingParams, ToolSpec

TEMPLATES = Path(__file__).parent / "data" / "templates"
FAMILY = {
    "hermes": "qwen2.5",
    "qwen3-coder": "qwen3-coder",
    "glm": "glm-4.6",
    "harmony": "gpt-oss",
    "deepseek": "deepseek-v3.1",
    "kimi": "kimi-k2",
    "mistral": "mistral-small-3.2",
    "mistral-json": "mistral-nemo",
    "llama3": "llama3.1",
}
# Schemas with finite values, so that a random-weight model finishes every call.
READ = ToolSpec(
    "read_file",
    "Read a file",
    {
        "type": "object",
        "properties": {
            "path": {"type": "string", "enum": ["a.py", "src/b.py"]},
            "limit": {"type": "integer"},
            "all": {"type": "boolean"},
        },
        "required": ["path"],
    },
)
LIST = ToolSpec(
    "list_files", "List files", {"type": "object", "properties": {}, "additionalProperties": False}
)
TOOLS = [READ, LIST]


def valid(name: str, args: dict[str, Any]) -> bool:
    if name == "list_files":
        return args == {}
    return (
        args.get("path") in ("a.py", "src/b.py")
        and isinstance(args.get("limit", 0), int)
        and isinstance(args.get("all", False), bool)
        and set(args) <= {"path", "limit", "all"}
    )


def forced(engine: Any, dialect: str, choice: str, parallel: bool) -> tuple[list[Any], str]:
    template = (TEMPLATES / f"{FAMILY[dialect]}.jinja").read_text()
    assert tool_dialect(template, "llama") == dialect
    grammar = tool_call_grammar(dialect, TOOLS, choice, parallel=parallel)
    tokens = engine.tokenize("<|im_start|>user\nRead a.py<|im_end|>\n<|im_start|>assistant\n")
    sampling = SamplingParams(max_tokens=400, temperature=0.7, seed=3, grammar=grammar)
    chunks = list(engine.generate(tokens, sampling))
    parser = reply_parser(template, "llama", tools=TOOLS)
    reason = chunks[-1].finish_reason or "stop"
    delta = parser.feed("".join(c.text for c in chunks)) + parser.finish(reason)
    return parser.calls, delta.content


@pytest.mark.parametrize("dialect", list(FAMILY))
def test_a_forced_named_call_comes_out_in_the_models_own_syntax(
    tiny_gguf_engine: Any, dialect: str
) -> None:
    calls, content = forced(tiny_gguf_engine, dialect, "read_file", parallel=False)
    assert len(calls) == 1 and content.strip() == ""
    assert calls[0].name == "read_file" and valid("read_file", json.loads(calls[0].arguments))


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dialect", list(FAMILY))
def test_llama_cpp_compiles_the_grammar_of_any_tool(
    tiny_gguf_engine: Any, dialect: str, parallel: bool
) -> None:
    grammar = tool_call_grammar(dialect, TOOLS, "required", parallel=parallel)
    out = list(tiny_gguf_engine.generate([1, 2, 3], SamplingParams(max_tokens=2, grammar=grammar)))
    assert out[-1].finish_reason == "length"  # it sampled under the grammar (no compile error)


@pytest.mark.parametrize("dialect", ["hermes", "deepseek", "glm"])
def test_required_allows_any_tool_and_parallel_calls(tiny_gguf_engine: Any, dialect: str) -> None:
    calls, _ = forced(tiny_gguf_engine, dialect, "required", parallel=True)
    assert calls and all(valid(c.name, json.loads(c.arguments)) for c in calls)


def test_grammar_text_per_dialect_and_choice() -> None:
    assert tool_call_grammar("hermes", TOOLS, "read_file", parallel=False).startswith(
        "root ::= call\n"
    )
    harmony = tool_call_grammar("harmony", TOOLS, "required", parallel=True)
    assert "<|call|>" not in harmony  # it ends generation: llama.cpp then allows only that token
    assert '"</think>"' in tool_call_grammar(
        "hermes", TOOLS, "required", parallel=False, prefix="</think>"
    )


def test_a_choice_that_names_no_tool_is_a_400() -> None:
    with pytest.raises(ImpetusError, match="not one of the tools") as err:
        tool_call_grammar("hermes", TOOLS, "write_file", parallel=False)
    assert err.value.status == 400 and err.value.param == "tool_choice"
    with pytest.raises(ImpetusError, match="requires tools"):
        tool_call_grammar("hermes", [], "required", parallel=False)
