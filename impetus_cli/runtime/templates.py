"""Chat templates, stop strings and tool calls.

``render_chat`` uses the model's own Jinja template in a sandbox when it has one, else a known
template for its architecture (built-in templates live in templating_builtin.py). A system prompt
is never dropped. Tool calls are parsed out of the model's text only when the request carried
tools: ``ToolCallStream`` lets ordinary text through at once and holds back only what could be
the start of a tool call.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from impetus_cli.errors import EngineError, ImpetusError
from impetus_cli.runtime.templating_builtin import BUILTIN, template_for
from impetus_cli.runtime.types import ChatMessage, ToolCall, ToolSpec

TOOL_PROMPT = """\
# Tools

You may call one or more functions to assist with the user query. The functions are described
below as JSON schemas:
<tools>
{tools}
</tools>

To call a function, answer with one <tool_call></tool_call> block per call, each holding a JSON
object with the function name and its arguments, and nothing else:
<tool_call>
{{"name": "<function-name>", "arguments": {{"<arg>": "<value>"}}}}
</tool_call>"""


def _tool_json(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


def _message_dict(msg: ChatMessage) -> dict[str, Any]:
    """OpenAI-shaped dict, as HF templates expect (tool-call arguments parsed to objects)."""
    data: dict[str, Any] = {"role": msg.role, "content": msg.content or ""}
    if msg.tool_calls:
        calls = []
        for call in msg.tool_calls:
            try:
                args: Any = json.loads(call.arguments or "{}")
            except ValueError:
                args = call.arguments
            calls.append(
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": args},
                }
            )
        data["tool_calls"] = calls
    if msg.tool_call_id:
        data["tool_call_id"] = msg.tool_call_id
    if msg.name:
        data["name"] = msg.name
    return data


def _with_tool_prompt(
    messages: list[dict[str, Any]], tools: Sequence[ToolSpec]
) -> list[dict[str, Any]]:
    """Templates that know nothing of tools get them described in the system message."""
    prompt = TOOL_PROMPT.format(tools="\n".join(json.dumps(t) for t in _tool_json(tools)))
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + prompt}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _tool_results_as_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates without a tool role: results become user turns, calls become text."""
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append(
                {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
            )
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                "<tool_call>\n"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                )
                + "\n</tool_call>"
                for c in m["tool_calls"]
            )
            out.append(
                {"role": "assistant", "content": ((m["content"] or "") + "\n" + calls).strip()}
            )
        else:
            out.append(m)
    return out


def _environment() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ImpetusError(
            f"The chat template refused the conversation: {message}", param="messages"
        )

    def tojson(
        value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
    ) -> str:
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render_jinja(
    template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, **extra: Any
) -> str:
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        return str(
            _environment().from_string(template).render(messages=messages, tools=tools, **extra)
        )
    except SecurityError as exc:
        raise EngineError(
            f"The model's chat template tried something unsafe: {exc}", "Use a trusted model."
        ) from exc
    except TemplateError as exc:
        raise EngineError(
            f"The model's chat template failed: {exc}",
            "Report it; a built-in template is used when none is set.",
        ) from exc


def render_chat(
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec] = (),
    *,
    template: str | None,
    architecture: str,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages``, through the model's template or a known fallback."""
    if any(m.images for m in messages):
        raise ImpetusError(
            "This model cannot read images.",
            "Send text only, or use a vision model.",
            param="messages",
        )
    dicts = [_message_dict(m) for m in messages]
    source = template or BUILTIN[template_for(architecture, bos_token)]
    native_tools = template is not None and "tools" in template
    if tools and not native_tools:
        dicts = _with_tool_prompt(dicts, tools)
    if "tool" not in source:  # the template has no notion of tool results
        dicts = _tool_results_as_user(dicts)
    return render_jinja(
        source,
        dicts,
        _tool_json(tools) if tools and native_tools else None,
        bos_token=bos_token,
        eos_token=eos_token,
        add_generation_prompt=add_generation_prompt,
    )


def stop_strings_for(architecture: str, template: str | None) -> tuple[str, ...]:
    """End-of-turn markers, in case the model emits them as text rather than an EOG token."""
    text = template or BUILTIN[template_for(architecture, "")]
    markers = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>")
    return tuple(m for m in markers if m in text)


# -- stop strings ----------------------------------------------------------------------------


class StopMatcher:
    """Streams text, cutting at the first stop string and holding back any tail that could be
    the start of one (a stop split across tokens is never emitted)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return buf[:cut], True
        keep = max((self._partial(buf, s) for s in self.stops), default=0)
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    @staticmethod
    def _partial(buf: str, stop: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of ``stop``."""
        for n in range(min(len(stop) - 1, len(buf)), 0, -1):
            if buf.endswith(stop[:n]):
                return n
        return 0

    def flush(self) -> str:
        held, self.held = self.held, ""
        return "" if self.stopped else held


# -- tool calls ------------------------------------------------------------------------------

MARKERS = {
    "hermes": ("<tool_call>", "</tool_call>"),
    "mistral": ("[TOOL_CALLS]", None),
    "llama3": ("<|python_tag|>", None),
}


def tool_call_style(architecture: str, template: str | None) -> str:
    text = template or ""
    if "[TOOL_CALLS]" in text or architecture.startswith("mistral"):
        return "mistral"
    if "<|python_tag|>" in text or ("<|start_header_id|>" in text and "<tool_call>" not in text):
        return "llama3"
    return "hermes"


def new_call_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


def _call_from(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    inner = obj.get("function")
    fn: dict[str, Any] = inner if isinstance(inner, dict) else obj
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except ValueError:
            return None
    return ToolCall(
        id=new_call_id(),
        name=name,
        arguments=json.dumps(args if args is not None else {}, ensure_ascii=False),
    )


def parse_json_calls(text: str) -> list[ToolCall] | None:
    """One JSON object or a list of them, each a call; None if the text is not that."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    calls = [_call_from(item) for item in items]
    return None if not calls or any(c is None for c in calls) else [c for c in calls if c]


class ToolCallStream:
    """Separates tool calls from text in a streamed reply."""

    def __init__(self, style: str = "hermes"):
        self.style = style
        self.buf = ""
        self.in_call = False
        self.calls: list[ToolCall] = []
        # Llama 3 and Mistral put calls at the very start of the reply (after whitespace).
        self.at_start = True

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self.buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, list[ToolCall]]:
        if self.style == "hermes":
            return self._drain_hermes(final)
        return self._drain_leading(final)

    def _drain_hermes(self, final: bool) -> tuple[str, list[ToolCall]]:
        open_tag, close_tag = "<tool_call>", "</tool_call>"
        out, found = "", list[ToolCall]()
        while True:
            if not self.in_call:
                i = self.buf.find(open_tag)
                if i < 0:
                    keep = 0 if final else StopMatcher._partial(self.buf, open_tag)
                    out += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep :]
                    return out, found
                out, self.buf, self.in_call = (
                    out + self.buf[:i],
                    self.buf[i + len(open_tag) :],
                    True,
                )
            j = self.buf.find(close_tag)
            if j < 0:
                if final:  # an unfinished call: give the text back rather than lose it
                    out, self.buf, self.in_call = out + open_tag + self.buf, "", False
                return out, found
            body, self.buf, self.in_call = self.buf[:j], self.buf[j + len(close_tag) :], False
            calls = parse_json_calls(body.strip())
            if calls is None:
                out += open_tag + body + close_tag
            else:
                found += calls
                self.calls += calls

    def _drain_leading(self, final: bool) -> tuple[str, list[ToolCall]]:
        marker = MARKERS[self.style][0]
        if not self.at_start:
            out, self.buf = self.buf, ""
            return out, []
        stripped = self.buf.lstrip()
        looks_like_call = stripped.startswith(marker) or stripped.startswith(("{", "["))
        could_be = not stripped or marker.startswith(stripped) or looks_like_call
        if not final and could_be:
            return "", []  # wait: it may be a call; a call is the whole reply
        body = stripped.removeprefix(marker).strip()
        calls = parse_json_calls(body) if looks_like_call else None
        self.at_start = False
        if calls:
            self.buf = ""
            self.calls += calls
            return "", calls
        out, self.buf = self.buf, ""
        return out, []
