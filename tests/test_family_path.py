"""The whole path in each family's dialect, on real llama.cpp: the tiny GGUF carrying that
family's real chat template renders an agent conversation with tools, a grammar (the request's
``grammar`` field) makes it write a reply exactly as that family's model would, and the reply
parser made from the model's own template and the rendered prompt turns it into reasoning,
content and a call."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.runtime.json_grammar import literal
from impetus_cli.runtime.replies import reply_parser, tool_dialect
from impetus_cli.runtime.replies.syntax import write_call
from impetus_cli.runtime.types import ChatMessage, SamplingParams, ToolCall, ToolSpec
from tests.fixtures.tiny_models import make_plan

pytest.importorskip("llama_cpp")

TOOL = ToolSpec(
    "read_file",
    "Read a file",
    {
        "type": "object",
        "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["path"],
    },
)
ARGS = {"path": "src/app.py", "limit": 20}
EARLIER = ToolCall("call_abcdefghijklmnopqrstuvwx", "read_file", '{"path": "README.md"}')
CONVERSATION = [
    ChatMessage("system", "You are a coding agent."),
    ChatMessage("user", "What does src/app.py do?"),
    ChatMessage("assistant", None, tool_calls=(EARLIER,), reasoning="Start with the readme."),
    ChatMessage("tool", "# app", tool_call_id=EARLIER.id, name="read_file"),
]
# family -> (what the model writes before its call, the reasoning the parser finds in it)
REPLIES = {
    "qwen3": ("<think>\nThe readme is short.\n</think>\n\n", "The readme is short."),
    "qwen3-coder": ("Reading the file.\n", ""),
    "qwen2.5": ("", ""),
    "glm-4.6": ("<think>Need the source.</think>\n", "Need the source."),
    "gpt-oss": (
        "<|channel|>analysis<|message|>Need the source.<|end|><|start|>assistant",
        "Need the source.",
    ),
    "deepseek-v3.1": ("", ""),
    "kimi-k2": ("", ""),
    "mistral-small-3.2": ("", ""),
    "llama3.1": ("", ""),
}


@pytest.fixture(scope="module")
def engines(family_gguf: Callable[[str], Path]) -> Any:
    from impetus_cli.runtime.engines.llama import LlamaEngine
    from impetus_cli.runtime.inspect import inspect_model

    opened: list[Any] = []

    def load(family: str) -> Any:
        path = family_gguf(family)
        info = inspect_model(path)
        engine = LlamaEngine.load(make_plan(path, info, 4096), info)
        opened.append(engine)
        return engine

    yield load
    for engine in opened:
        engine.close()


@pytest.mark.parametrize("family", list(REPLIES))
def test_a_family_model_reply_becomes_reasoning_content_and_a_call(
    engines: Any, family: str
) -> None:
    engine = engines(family)
    template = engine.info.chat_template
    assert (
        template
        and template
        == (Path(__file__).parent / "data" / "templates" / f"{family}.jinja").read_text()
    )
    dialect = tool_dialect(template, engine.info.architecture)
    prompt = engine.render(CONVERSATION, [TOOL])
    assert "# app" in prompt and "read_file" in prompt
    before, reasoning = REPLIES[family]
    reply = before + write_call(dialect, TOOL.name, ARGS)
    sampling = SamplingParams(
        max_tokens=400, temperature=0.8, grammar=f"root ::= {literal(reply)}\n"
    )
    chunks = list(engine.generate(engine.tokenize(prompt), sampling))
    assert "".join(c.text for c in chunks) == reply
    parser = reply_parser(template, engine.info.architecture, tools=[TOOL], prompt=prompt)
    delta = parser.feed("".join(c.text for c in chunks)) + parser.finish(
        chunks[-1].finish_reason or "stop"
    )
    assert delta.reasoning == reasoning
    assert delta.content.strip() == before.strip() if not reasoning else delta.content.strip() == ""
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [("read_file", ARGS)]
