"""Chat templates per architecture, the sandbox, tool prompts, stop strings and the Hermes,
Llama 3 and Mistral call parsers the built-in formats rely on."""

from __future__ import annotations

import json

import pytest

from impetus_cli.errors import EngineError, ImpetusError
from impetus_cli.runtime.replies import reply_parser, tool_dialect
from impetus_cli.runtime.stops import StopMatcher
from impetus_cli.runtime.templates import render_chat
from impetus_cli.runtime.types import ChatMessage, ToolCall, ToolSpec

TEMPLATE_OF = {
    "hermes": None,
    "llama3": "<|start_header_id|><|python_tag|>",
    "mistral": "[TOOL_CALLS]",
}

SYS = ChatMessage(role="system", content="Be brief.")
USER = ChatMessage(role="user", content="Hi")
BOT = ChatMessage(role="assistant", content="Hello!")


@pytest.mark.parametrize(
    ("arch", "bos", "expected"),
    [
        (
            "gemma3",
            "<bos>",
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            "qwen2",
            "",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "llama",
            "<|begin_of_text|>",
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        ("mistral", "<s>", "<s>[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] Hi [/INST]"),
        (
            "phi3",
            "",
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
        ),
        (
            "llama",
            "<s>",
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Hi [/INST]",
        ),
    ],
)
def test_builtin_templates_per_architecture(arch: str, bos: str, expected: str) -> None:
    eos = "</s>" if bos == "<s>" else ""
    out = render_chat(
        [SYS, USER, BOT, USER], template=None, architecture=arch, bos_token=bos, eos_token=eos
    )
    assert out == expected


def test_the_system_prompt_is_never_dropped_even_without_a_user_turn() -> None:
    out = render_chat([SYS], template=None, architecture="gemma3", bos_token="<bos>")
    assert "Be brief." in out


QWEN_LIKE = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are helpful.' }}

# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if not (tools and m.role == 'system') %}
<|im_start|>{{ m.role }}
{%- if m.tool_calls %}{% for c in m.tool_calls %}
<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}
{%- else %}
{{ m.content }}{% endif %}<|im_end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

TOOL = ToolSpec(
    name="read_file",
    description="Read a file",
    parameters={"type": "object", "properties": {"path": {"type": "string"}}},
)


def test_a_models_own_template_renders_tools_and_tool_calls() -> None:
    call = ToolCall(id="c1", name="read_file", arguments='{"path": "a.py"}')
    messages = [
        SYS,
        USER,
        ChatMessage(role="assistant", content=None, tool_calls=(call,)),
        ChatMessage(role="tool", content="print(1)", tool_call_id="c1"),
    ]
    out = render_chat(messages, [TOOL], template=QWEN_LIKE, architecture="qwen2")
    assert (
        '"name": "read_file"' in out
        and '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}' in out
    )
    assert "<|im_start|>tool" in out and "print(1)<|im_end|>" in out
    assert out.endswith("<|im_start|>assistant\n")


def test_templates_without_tool_support_get_a_tool_prompt_naming_a_real_tool() -> None:
    out = render_chat([USER], [TOOL], template=None, architecture="gemma3", bos_token="<bos>")
    assert "<tools>" in out and '"read_file"' in out and "<tool_call>" in out
    # The example is a call of the real first tool, never a placeholder a model could copy.
    assert '<tool_call>\n{"name": "read_file", "arguments": {"path": "..."}}\n</tool_call>' in out
    assert "<function-name>" not in out and "<arg>" not in out


def test_the_sandbox_blocks_attribute_abuse() -> None:
    with pytest.raises(EngineError, match="unsafe"):
        render_chat(
            [USER], template="{{ ''.__class__.__mro__[1].__subclasses__() }}", architecture="qwen2"
        )


def test_raise_exception_in_a_template_is_a_clear_400() -> None:
    with pytest.raises(ImpetusError, match="refused the conversation: roles must alternate"):
        render_chat(
            [USER], template="{{ raise_exception('roles must alternate') }}", architecture="qwen2"
        )


def test_images_are_refused_for_text_models() -> None:
    with pytest.raises(ImpetusError, match="cannot read images"):
        render_chat(
            [ChatMessage(role="user", content="x", images=("data:image/png;base64,AAAA",))],
            template=None,
            architecture="qwen2",
        )


def stream(style: str, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    parser = reply_parser(TEMPLATE_OF[style], "llama", tools=True)
    text, calls = "", []
    for piece in pieces:
        delta = parser.feed(piece)
        text, calls = text + delta.content, calls + list(delta.tool_calls)
    delta = parser.finish("stop")
    return text + delta.content, calls + list(delta.tool_calls)


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 50])
def test_hermes_calls_parsed_from_any_chunking(size: int) -> None:
    reply = (
        'Let me check. <tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'
        '<tool_call>{"name": "list_files", "arguments": {}}</tool_call> done'
    )
    text, calls = stream("hermes", chunks(reply, size))
    assert text == "Let me check.  done"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("read_file", {"path": "a.py"}),
        ("list_files", {}),
    ]
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in calls)


def test_malformed_json_in_a_tool_call_is_kept_as_text() -> None:
    reply = "<tool_call>{not json}</tool_call>"
    assert stream("hermes", chunks(reply, 4)) == (reply, [])


def test_unfinished_tool_call_is_given_back_as_text() -> None:
    assert stream("hermes", ['<tool_call>{"name": ']) == ('<tool_call>{"name": ', [])


def test_llama3_json_and_python_tag_calls() -> None:
    text, calls = stream("llama3", chunks('<|python_tag|>{"name": "f", "parameters": {"x": 1}}', 5))
    assert text == "" and calls[0].name == "f" and json.loads(calls[0].arguments) == {"x": 1}
    text, calls = stream("llama3", chunks('{"name": "g", "arguments": {}}', 3))
    assert calls[0].name == "g" and calls[0].arguments == "{}"
    assert stream("llama3", ["Plain answer."]) == ("Plain answer.", [])


def test_mistral_tool_calls() -> None:
    _, calls = stream(
        "mistral",
        chunks(
            '[TOOL_CALLS] [{"name": "a", "arguments": {"q": "x"}}, {"name": "b", "arguments": {}}]',
            7,
        ),
    )
    assert [c.name for c in calls] == ["a", "b"]


def test_tool_dialect_by_template() -> None:
    assert tool_dialect(None, "mistral") == "hermes"  # no template: our prompt teaches Hermes
    assert tool_dialect("<|start_header_id|>{{ x }}<|python_tag|>", "llama") == "llama3"
    assert tool_dialect(QWEN_LIKE, "qwen2") == "hermes"
    assert tool_dialect("[TOOL_CALLS][{{ x }}", "llama") == "mistral-json"


@pytest.mark.parametrize("size", [1, 2, 5])
def test_stop_strings_split_across_pieces_are_never_emitted(size: int) -> None:
    stops = [
        "\n\n",
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "```",
        "\ndef",
        "\nclass",
        "/src/",
    ]
    matcher = StopMatcher(stops)
    out, stopped = "", False
    for piece in chunks("x = 1\ny = 2\ndef f(): pass", size):
        text, stopped = matcher.feed(piece)
        out += text
        if stopped:
            break
    assert out == "x = 1\ny = 2" and stopped


def test_held_back_text_is_flushed_when_no_stop_comes() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", False)
    assert matcher.flush() == "ST"
