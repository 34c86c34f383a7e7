"""The chat templates real models ship (tests/data/templates, SOURCES.md says where each is
from) render a whole agent conversation: a system prompt, tools, a tool-call turn, its result,
replayed reasoning, and each reasoning switch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from impetus_cli.runtime.replies import reply_parser, tool_dialect
from impetus_cli.runtime.templates import render_chat
from impetus_cli.runtime.types import ChatMessage, Reasoning, ToolCall, ToolSpec

TEMPLATES = Path(__file__).parent / "data" / "templates"
NAMES = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))

TOOL = ToolSpec(
    "read_file",
    "Read a file",
    {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "file path"},
            "limit": {"type": "integer"},
        },
        "required": ["path"],
    },
)
CALL = ToolCall("call_abcdefghijklmnopqrstuvwx", "read_file", '{"path": "a.py", "limit": 3}')
SYSTEM = ChatMessage("system", "Be brief.")
ASK = ChatMessage("user", "Read a.py")
CALLING = ChatMessage("assistant", None, tool_calls=(CALL,), reasoning="I should read it.")
RESULT = ChatMessage("tool", "print(1)", tool_call_id=CALL.id, name="read_file")
ANSWER = ChatMessage("assistant", "It prints 1.", reasoning="Easy.")
THANKS = ChatMessage("user", "Thanks")
CONVERSATION = [SYSTEM, ASK, CALLING, RESULT, ANSWER, THANKS]

# What each family's prompt ends with: the start of the assistant's turn.
GENERATION_PROMPT = {
    "deepseek-r1-distill": "<｜Assistant｜><think>",
    "deepseek-v3.1": "<｜Assistant｜>",
    "devstral": "[INST]Thanks[/INST]",
    "gemma3": "<start_of_turn>model\n",
    "glm-4.6": "<|assistant|>",
    "gpt-oss": "<|start|>assistant",
    "kimi-k2": "<|im_assistant|>assistant<|im_middle|>",
    "llama3.1": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3.2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral-nemo": "Thanks[/INST]",
    "mistral-small-3.2": "[INST]Thanks[/INST]",
    "qwen2.5": "<|im_start|>assistant\n",
    "qwen3": "<|im_start|>assistant\n",
    "qwen3-coder": "<|im_start|>assistant\n",
}

DIALECT = {
    "deepseek-r1-distill": "deepseek",
    "deepseek-v3.1": "deepseek",
    "devstral": "mistral",
    "gemma3": "hermes",
    "glm-4.6": "glm",
    "gpt-oss": "harmony",
    "kimi-k2": "kimi",
    "llama3.1": "llama3",
    "llama3.2": "llama3",
    "mistral-nemo": "mistral-json",
    "mistral-small-3.2": "mistral",
    "qwen2.5": "hermes",
    "qwen3": "hermes",
    "qwen3-coder": "qwen3-coder",
}

OPTIONS = [
    Reasoning(),
    Reasoning(enabled=True),
    Reasoning(enabled=False),
    Reasoning(effort="low"),
    Reasoning(effort="high"),
]


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


def render(name: str, messages: list[ChatMessage], reasoning: Reasoning = Reasoning()) -> str:
    return render_chat(
        messages,
        [TOOL],
        template=template(name),
        architecture="llama",
        bos_token="<s>",
        eos_token="</s>",
        reasoning=reasoning,
    )


def test_every_family_named_in_the_sources_is_stored() -> None:
    assert sorted(GENERATION_PROMPT) == NAMES
    sources = (TEMPLATES / "SOURCES.md").read_text()
    assert all(f"| {name}.jinja |" in sources for name in NAMES)


@pytest.mark.parametrize("reasoning", OPTIONS, ids=repr)
@pytest.mark.parametrize("name", NAMES)
def test_a_whole_agent_conversation_renders(name: str, reasoning: Reasoning) -> None:
    out = render(name, CONVERSATION, reasoning)
    for text in ("Be brief.", "read_file", "print(1)", "It prints 1.", "Thanks", "a.py"):
        assert text in out, text
    assert GENERATION_PROMPT[name] in out[-60:]


@pytest.mark.parametrize("name", NAMES)
def test_the_dialect_of_each_family(name: str) -> None:
    assert tool_dialect(template(name), "llama") == DIALECT[name]


@pytest.mark.parametrize("name", ["qwen3", "glm-4.6", "gpt-oss"])
def test_reasoning_replayed_by_the_client_is_shown_where_the_template_shows_it(name: str) -> None:
    # These templates show the reasoning of the turns after the last user message: the
    # agent's own tool loop.
    out = render(name, [SYSTEM, ASK, CALLING, RESULT])
    assert "I should read it." in out


def test_reasoning_switches_reach_the_templates_that_read_them() -> None:
    assert render("qwen3", [ASK], Reasoning(enabled=False)).endswith("<think>\n\n</think>\n\n")
    assert render("qwen3", [ASK], Reasoning(enabled=True)).endswith("<|im_start|>assistant\n")
    assert render("glm-4.6", [ASK], Reasoning(enabled=False)).endswith("<think></think>")
    assert render("deepseek-v3.1", [ASK], Reasoning(enabled=True)).endswith("<think>")
    assert render("deepseek-v3.1", [ASK], Reasoning(enabled=False)).endswith("<think></think>")
    assert "Reasoning: high" in render("gpt-oss", [ASK], Reasoning(effort="high"))
    assert "Reasoning: low" in render("gpt-oss", [ASK], Reasoning(enabled=False))
    assert "Reasoning: medium" in render("gpt-oss", [ASK])


@pytest.mark.parametrize("name", ["mistral-small-3.2", "mistral-nemo"])
def test_mistral_templates_get_the_nine_character_call_ids_they_demand(name: str) -> None:
    out = render(name, [ASK, CALLING, RESULT])
    ids = set(re.findall(r"[0-9a-f]{9}", out))
    assert ids and CALL.id not in out


def test_consecutive_user_messages_are_joined_for_templates_that_demand_alternation() -> None:
    out = render("gemma3", [ASK, ChatMessage("user", "<environment_details>")])
    assert "Read a.py\n\n<environment_details>" in out


@pytest.mark.parametrize(
    ("name", "opened"),
    [("deepseek-v3.1", True), ("deepseek-r1-distill", True), ("qwen3", False), ("glm-4.6", False)],
)
def test_a_prompt_that_opens_the_reasoning_makes_the_reply_start_inside_it(
    name: str, opened: bool
) -> None:
    prompt = render(name, [ASK], Reasoning(enabled=True))
    parser = reply_parser(template(name), "llama", tools=[TOOL], prompt=prompt)
    delta = parser.feed("Let me look.</think>Done.") + parser.finish("stop")
    if opened:
        assert (delta.reasoning, delta.content) == ("Let me look.", "Done.")
    else:
        assert delta.reasoning == "" and delta.content == "Let me look.</think>Done."


def test_a_conversation_a_template_cannot_render_is_a_400_not_a_crash() -> None:
    from impetus_cli.errors import ImpetusError

    odd = ToolCall("call_x", "read_file", "not json")  # Qwen3-Coder iterates the arguments
    with pytest.raises(ImpetusError, match="could not render") as err:
        render("qwen3-coder", [ASK, ChatMessage("assistant", None, tool_calls=(odd,))])
    assert err.value.status == 400 and err.value.param == "messages"
