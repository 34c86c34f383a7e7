"""Replies in every dialect, streamed in pieces of 1, 3 and all characters: the content, the
reasoning and the calls come out the same; call deltas start with the id and name and their
argument fragments add up to the call's arguments; malformed output comes back as text; a
reply cut inside a call drops that call and leaks none of it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from impetus_cli.runtime.replies import MARKERS, preserved_markers, reply_parser
from impetus_cli.runtime.replies.syntax import write_call
from impetus_cli.runtime.types import ToolSpec

TEMPLATES = Path(__file__).parent / "data" / "templates"
TOOLS = [
    ToolSpec(
        "read_file",
        "Read a file",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "limit": {"type": "integer"},
                "flags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["path"],
        },
    ),
    ToolSpec(
        "write_file",
        "Write a file",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        },
    ),
    ToolSpec("list_files", "List files", {"type": "object", "properties": {}}),
]
CODE = 'def f(a, b):\n    return a < b and "x" != "</y>"\n'
SIZES = [1, 3, 10_000]


def template(name: str) -> str | None:
    return None if name == "none" else (TEMPLATES / f"{name}.jinja").read_text()


@dataclass
class Result:
    content: str = ""
    reasoning: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)
    streamed: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, args]
    cut: bool = False

    def summary(self) -> tuple[str, str, list[tuple[str, Any]], bool]:
        return self.content, self.reasoning, self.calls, self.cut


def run(
    name: str, text: str, size: int, *, tools: Any = TOOLS, prompt: str = "", reason: str = "stop"
) -> Result:
    parser = reply_parser(template(name), "llama", tools=tools, prompt=prompt)
    out, complete = Result(), []
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    for delta in [parser.feed(p) for p in pieces] + [parser.finish(reason)]:
        out.content += delta.content
        out.reasoning += delta.reasoning
        complete += delta.tool_calls
        for d in delta.tool_call_deltas:
            if d.index not in out.streamed:
                assert d.id is not None and d.name is not None and d.arguments == ""
                out.streamed[d.index] = [d.id, d.name, ""]
            else:
                assert d.id is None and d.name is None
                out.streamed[d.index][2] += d.arguments
    out.calls = [(c.name, json.loads(c.arguments)) for c in complete]
    out.cut = parser.cut_call
    assert [(c.id, c.name, c.arguments) for c in complete] == [
        tuple(out.streamed[i]) for i in range(len(complete))
    ]
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", c.id) for c in complete)
    assert parser.calls == complete
    return out


def same_for_every_chunking(name: str, text: str, **kw: Any) -> Result:
    results = [run(name, text, size, **kw) for size in SIZES]
    assert results[0].summary() == results[1].summary() == results[2].summary()
    return results[0]


READ = ("read_file", {"path": "src/app.py", "limit": 20})
WRITE = ("write_file", {"path": "f.py", "content": CODE})
LIST = ("list_files", {})

CASES = {
    "hermes": (
        "qwen2.5",
        "I'll look.\n"
        + write_call("hermes", *READ)
        + "\n"
        + write_call("hermes", *WRITE)
        + "\n"
        + write_call("hermes", *LIST),
        "I'll look.\n\n\n",
        "",
    ),
    "qwen3 thinking": (
        "qwen3",
        "<think>\nThe user wants app.py.\nRead it.\n</think>\n\n" + write_call("hermes", *READ),
        "",
        "The user wants app.py.\nRead it.",
    ),
    "qwen3-coder": (
        "qwen3-coder",
        "Let me read it.\n"
        + "<tool_call>\n<function=read_file>\n<parameter=path>\nsrc/app.py\n</parameter>\n"
        + "<parameter=limit>\n20\n</parameter>\n</function>\n</tool_call>\n"
        + write_call("qwen3-coder", *WRITE)
        + write_call("qwen3-coder", *LIST),
        "Let me read it.\n\n",
        "",
    ),
    "glm": (
        "glm-4.6",
        "<think>Read the file first.</think>\nReading.\n"
        + write_call("glm", *READ)
        + write_call("glm", *WRITE)
        + write_call("glm", *LIST),
        "Reading.\n",
        "Read the file first.",
    ),
    "harmony": (
        "gpt-oss",
        "<|channel|>analysis<|message|>User wants app.py. Use read_file.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.read_file <|constrain|>json"
        '<|message|>{"path":"src/app.py","limit":20}<|call|>',
        "",
        "User wants app.py. Use read_file.",
    ),
    "harmony recipient first": (
        "gpt-oss",
        "<|channel|>analysis<|message|>Write it.<|end|>"
        "<|start|>assistant to=functions.write_file<|channel|>commentary json<|message|>"
        + json.dumps(WRITE[1])
        + "<|call|>",
        "",
        "Write it.",
    ),
    "deepseek v3.1": (
        "deepseek-v3.1",
        "I'll read both.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>read_file<｜tool▁sep｜>"
        '{"path": "src/app.py", "limit": 20}<｜tool▁call▁end｜><｜tool▁call▁begin｜>write_file'
        "<｜tool▁sep｜>" + json.dumps(WRITE[1]) + "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "I'll read both.",
        "",
    ),
    "deepseek r1": (
        "deepseek-r1-distill",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>read_file\n```json\n"
        '{"path": "src/app.py", "limit": 20}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        "",
        "",
    ),
    "kimi": (
        "kimi-k2",
        "I'll read it.<|tool_calls_section_begin|><|tool_call_begin|>functions.read_file:0"
        '<|tool_call_argument_begin|>{"path": "src/app.py", "limit": 20}<|tool_call_end|>'
        "<|tool_call_begin|>functions.write_file:1<|tool_call_argument_begin|>"
        + json.dumps(WRITE[1])
        + "<|tool_call_end|><|tool_calls_section_end|>",
        "I'll read it.",
        "",
    ),
    "mistral": (
        "mistral-small-3.2",
        write_call("mistral", *READ)
        + "[TOOL_CALLS]write_file[CALL_ID]a1b2c3d4e[ARGS]"
        + json.dumps(WRITE[1]),
        "",
        "",
    ),
    "devstral": ("devstral", "Sure.\n" + write_call("mistral", *READ), "Sure.\n", ""),
    "mistral-json": (
        "mistral-nemo",
        '[TOOL_CALLS][{"name": "read_file", "arguments": {"path": "src/app.py", "limit": 20}}, '
        + json.dumps({"name": "write_file", "arguments": WRITE[1]})
        + "]",
        "",
        "",
    ),
    "llama3": ("llama3.1", write_call("llama3", *READ), "", ""),
    "llama3 python_tag": (
        "llama3.2",
        "<|python_tag|>" + write_call("llama3", *READ) + "; " + write_call("llama3", *WRITE),
        "",
        "",
    ),
    "no template (our prompt)": (
        "none",
        "Reading.\n" + write_call("hermes", *READ),
        "Reading.\n",
        "",
    ),
}
EXPECTED_CALLS = {
    "hermes": [READ, WRITE, LIST],
    "qwen3 thinking": [READ],
    "qwen3-coder": [READ, WRITE, LIST],
    "glm": [READ, WRITE, LIST],
    "harmony": [READ],
    "harmony recipient first": [WRITE],
    "deepseek v3.1": [READ, WRITE],
    "deepseek r1": [READ],
    "kimi": [READ, WRITE],
    "mistral": [READ, WRITE],
    "devstral": [READ],
    "mistral-json": [READ, WRITE],
    "llama3": [READ],
    "llama3 python_tag": [READ, WRITE],
    "no template (our prompt)": [READ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_calls_reasoning_and_content_are_the_same_for_every_chunking(case: str) -> None:
    name, text, content, reasoning = CASES[case]
    out = same_for_every_chunking(name, text)
    assert out.content == content
    assert out.reasoning == reasoning
    assert out.calls == [(n, a) for n, a in EXPECTED_CALLS[case]]


def test_arguments_stream_member_by_member() -> None:
    parser = reply_parser(template("qwen3-coder"), "llama", tools=TOOLS)
    head = parser.feed("<tool_call>\n<function=read_file>\n<parameter=path>\na.py\n</parameter>\n")
    assert [(d.name, d.arguments) for d in head.tool_call_deltas] == [
        ("read_file", ""),
        (None, '{"path": "a.py"'),
    ]
    more = parser.feed("<parameter=limit>\n5\n</parameter>\n</function>\n</tool_call>")
    # Fragments that complete in the same piece come as one.
    assert [d.arguments for d in more.tool_call_deltas] == [', "limit": 5}']
    assert more.tool_calls[0].arguments == '{"path": "a.py", "limit": 5}'


def test_text_that_is_not_a_call_comes_out_at_once() -> None:
    parser = reply_parser(template("qwen2.5"), "llama", tools=TOOLS)
    assert parser.feed("Hello <b>world</b> and <tool").content == "Hello <b>world</b> and "
    assert parser.feed("box>").content == "<toolbox>"


def test_xml_values_are_typed_by_the_schema() -> None:
    text = (
        "<tool_call>read_file\n<arg_key>path</arg_key>\n<arg_value>42</arg_value>\n"
        "<arg_key>limit</arg_key>\n<arg_value>42</arg_value>\n<arg_key>flags</arg_key>\n"
        '<arg_value>["-n"]</arg_value>\n<arg_key>other</arg_key>\n<arg_value>7</arg_value>\n'
        "</tool_call>"
    )
    out = same_for_every_chunking("glm-4.6", text)
    assert out.calls == [("read_file", {"path": "42", "limit": 42, "flags": ["-n"], "other": "7"})]


def test_without_tools_no_call_is_parsed_but_reasoning_is_still_split() -> None:
    cline = "<read_file>\n<path>src/app.py</path>\n</read_file>"
    out = same_for_every_chunking("qwen3", "<think>Use a tool.</think>\n" + cline, tools=False)
    assert (out.content, out.reasoning, out.calls) == (cline, "Use a tool.", [])
    hermes_text = write_call("hermes", *READ)
    assert same_for_every_chunking("qwen2.5", hermes_text, tools=[]).content == hermes_text
    harmony = "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|channel|>final<|message|>Paris.<|return|>"
    out = same_for_every_chunking("gpt-oss", harmony, tools=False)
    assert (out.content, out.reasoning) == ("Paris.", "Hmm.")


MALFORMED = {
    "hermes": ("qwen2.5", "Try <tool_call>{not json}</tool_call> again"),
    "hermes unclosed": ("qwen2.5", 'Try <tool_call>{"name": "read_file", "argu'),
    "qwen3-coder": ("qwen3-coder", "<tool_call>\nno function here"),
    "glm": ("glm-4.6", "<tool_call>" + "x" * 250),
    "harmony plain text": ("gpt-oss", "Just text, no channels."),
    "deepseek": ("deepseek-v3.1", "<｜tool▁calls▁begin｜>oops, plain text"),
    "kimi": ("kimi-k2", "<|tool_calls_section_begin|>no call token"),
    "mistral": ("mistral-small-3.2", "[TOOL_CALLS]" + "word " * 60),
    "mistral-json": ("mistral-nemo", "[TOOL_CALLS][1, 2, 3]"),
    "llama3": ("llama3.1", '{"answer": 42}'),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_output_comes_back_as_content(case: str) -> None:
    name, text = MALFORMED[case]
    out = same_for_every_chunking(name, text)
    assert out.calls == [] and not out.cut
    assert out.content == text


CUT = {
    "hermes": (
        "qwen2.5",
        'Reading.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "src/a',
    ),
    "hermes whole": ("qwen2.5", 'Reading.\n<tool_call>\n{"arguments": {"path": "src/a'),
    "qwen3-coder": (
        "qwen3-coder",
        "Reading.\n<tool_call>\n<function=read_file>\n<parameter=path>\nsrc/",
    ),
    "glm": ("glm-4.6", "Reading.\n<tool_call>read_file\n<arg_key>path</arg_key>\n<arg_value>sr"),
    "harmony": (
        "gpt-oss",
        "<|channel|>final<|message|>Reading.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.read_file <|constrain|>json<|message|>{"path": "sr',
    ),
    "deepseek": ("deepseek-v3.1", "Reading.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>read_fi"),
    "kimi": (
        "kimi-k2",
        'Reading.<|tool_calls_section_begin|><|tool_call_begin|>functions.read_file:0<|tool_call_argument_begin|>{"pa',
    ),
    "mistral": ("mistral-small-3.2", 'Reading.[TOOL_CALLS]read_file[ARGS]{"path": "s'),
    "mistral-json": ("mistral-nemo", 'Reading.[TOOL_CALLS][{"name": "read_file", "argu'),
    "llama3": ("llama3.1", '{"name": "read_file", "parameters": {"path": "s'),
}


@pytest.mark.parametrize("case", list(CUT))
def test_a_reply_cut_inside_a_call_drops_it_and_leaks_no_call_text(case: str) -> None:
    name, text = CUT[case]
    out = same_for_every_chunking(name, text, reason="length")
    assert out.cut and out.calls == []
    assert out.content in ("Reading.\n", "Reading.", "")
    assert "read_f" not in out.content and "path" not in out.content


def test_the_markers_an_engine_must_render_for_each_family() -> None:
    assert "<|channel|>" in preserved_markers(template("gpt-oss"), "gpt-oss")
    assert preserved_markers(template("qwen3"), "qwen3") == (
        "<tool_call>",
        "</tool_call>",
        "<think>",
        "</think>",
    )
    assert "[ARGS]" in preserved_markers(template("devstral"), "llama")
    assert "<|tool_call_argument_begin|>" in preserved_markers(template("kimi-k2"), "deepseek2")


def test_other_reasoning_markers_magistral_and_seed() -> None:
    magistral = "{{ '[SYSTEM_PROMPT]' }}[THINK]...[/THINK][TOOL_CALLS]{{ name }}[ARGS]{{ args }}"
    parser = reply_parser(magistral, "mistral3", tools=TOOLS)
    text = "[THINK]Read it first.[/THINK]Reading." + write_call("mistral", *READ)
    delta = parser.feed(text) + parser.finish("stop")
    assert (delta.reasoning, delta.content) == ("Read it first.", "Reading.")
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [READ]
    seed = reply_parser("<seed:think>{{ x }}</seed:think><tool_call>", "seed_oss", tools=False)
    delta = seed.feed("<seed:think>Hmm.</seed:think>Hi") + seed.finish("stop")
    assert (delta.reasoning, delta.content) == ("Hmm.", "Hi")


def test_random_marker_soup_never_raises_and_every_chunking_agrees() -> None:
    # Any mix of every dialect's markers, JSON pieces and text, cut anywhere: the parser
    # never raises, and 1-character, random-size and whole feeding give the same result.
    import random

    pieces = [
        *sorted({m for ms in MARKERS.values() for m in ms}),
        "<think>", "</think>", "[THINK]", '{"name": "read_file", "arguments": ', '{"path": "a.py"}',
        "}", "{", '"', ",", ":", " ", "\n", "read_file", "functions.read_file:0", "<parameter=path>",
        "</parameter>", "hello", "```json\n", "```", "function", "[", "]", "null", "\\", ";",
        "<|start|>assistant", "commentary to=functions.read_file ", "analysis", "final",
    ]  # fmt: skip
    names = [p.stem for p in TEMPLATES.glob("*.jinja")] + ["none"]
    rng = random.Random(20261202)
    for _ in range(400):
        name = rng.choice(names)
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        reason = rng.choice(["stop", "length"])
        results = [run(name, text, size, reason=reason) for size in (1, rng.randint(2, 7), 10_000)]
        assert results[0].summary() == results[1].summary() == results[2].summary(), (name, text)
