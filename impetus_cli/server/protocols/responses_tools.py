"""OpenAI Responses tools -> the function tools the model sees, and back.

Function tools pass through. Tools grouped in a ``namespace`` (Codex's ``multi_agent_v1``, MCP
servers) reach the model under one flat name each, and a call of one goes back to the client
under its namespace, as the client registered it. A ``custom`` (freeform) tool takes one text:
the model sees a function of one string argument, and its call goes back as that text. Tools
OpenAI runs on its side (``web_search`` and the like) are left out of what the model sees;
forcing one with ``tool_choice`` is a clear 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from impetus_cli.runtime.types import ToolSpec
from impetus_cli.server.protocols.fields import bad, obj
from impetus_cli.server.protocols.openai_parse import tool_spec

CUSTOM_INPUT = "input"  # the one argument a custom (freeform) tool's text travels in
# Tools that OpenAI runs on its side; the model here cannot call them.
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use",
        "computer_use_preview",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
    }
)


@dataclass(frozen=True)
class ToolName:
    """A tool as the client named it: ``name`` inside ``namespace`` (None at top level); a
    ``custom`` tool takes one text instead of JSON arguments."""

    name: str
    namespace: str | None = None
    custom: bool = False


def flat_name(space: str | None, name: str) -> str:
    """The one name the model sees for ``name`` in namespace ``space``. Namespaces that end
    in ``_`` (Codex's ``mcp__server__``) are joined as they are, others with ``__``."""
    if not space:
        return name
    return space + name if space.endswith("_") else f"{space}__{name}"


def tools(value: Any) -> tuple[tuple[ToolSpec, ...], dict[str, ToolName]]:
    """The tools the model sees, and how each of its names maps back to the client's."""
    if value is None:
        return (), {}
    if not isinstance(value, list):
        raise bad("'tools' must be an array.", "tools")
    specs: list[ToolSpec] = []
    names: dict[str, ToolName] = {}
    for i, raw in enumerate(value):
        tool = obj(raw, f"tools[{i}]")
        kind = tool.get("type")
        if kind == "namespace":
            _namespace(tool, f"tools[{i}]", specs, names)
        elif kind in ("function", "custom"):
            _add(_tool(tool, None, f"tools[{i}]"), specs, names, f"tools[{i}]")
        elif not isinstance(kind, str):
            raise bad("Every tool needs a 'type'.", f"tools[{i}].type")
        # else: a hosted tool (web_search, file_search, mcp ...): not the model's to call here
    return tuple(specs), names


def _namespace(
    tool: Mapping[str, Any], param: str, specs: list[ToolSpec], names: dict[str, ToolName]
) -> None:
    space = tool.get("name")
    inner = tool.get("tools")
    if not isinstance(space, str) or not space or not isinstance(inner, list):
        raise bad("A namespace needs a 'name' and an array of 'tools'.", param)
    for j, raw in enumerate(inner):
        sub = obj(raw, f"{param}.tools[{j}]")
        if sub.get("type", "function") in ("function", "custom"):
            _add(_tool(sub, space, f"{param}.tools[{j}]"), specs, names, f"{param}.tools[{j}]")


def _tool(tool: Mapping[str, Any], space: str | None, param: str) -> tuple[ToolSpec, ToolName]:
    name = tool.get("name")
    if not isinstance(name, str):
        raise bad("A tool needs a string 'name'.", f"{param}.name")
    custom = tool.get("type") == "custom"
    flat = flat_name(space, name)
    if not custom:
        spec = tool_spec(flat, tool.get("description"), tool.get("parameters"), param)
        return spec, ToolName(name, space)
    # A custom (freeform) tool takes one text; a model that calls functions passes it as one
    # string argument, and the call goes back as a custom_tool_call with that text.
    description = str(tool.get("description") or "")
    schema = {
        "type": "object",
        "properties": {CUSTOM_INPUT: {"type": "string", "description": "The tool's input."}},
        "required": [CUSTOM_INPUT],
    }
    return tool_spec(flat, description, schema, param), ToolName(name, space, custom=True)


def _add(
    pair: tuple[ToolSpec, ToolName], specs: list[ToolSpec], names: dict[str, ToolName], param: str
) -> None:
    spec, name = pair
    if spec.name in names:
        raise bad(f"Two tools are named {spec.name!r}.", f"{param}.name")
    specs.append(spec)
    names[spec.name] = name


def tool_choice(
    value: Any, specs: tuple[ToolSpec, ...], names: Mapping[str, ToolName]
) -> tuple[tuple[ToolSpec, ...], str | None]:
    """The tools left and the runtime's choice: auto, none, required or one tool's name."""
    if value is None or value in ("auto", "none", "required"):
        if value == "required" and not specs:
            raise bad("tool_choice 'required' needs at least one function tool.", "tool_choice")
        return specs, value
    choice = obj(value, "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        return specs, _named(choice, names)
    if kind == "allowed_tools":
        return _allowed(choice, specs, names)
    if isinstance(kind, str) and kind in HOSTED_TOOLS:
        raise bad(
            f"tool_choice forces the hosted tool {kind!r}, which this server does not run.",
            "tool_choice",
        )
    raise bad(
        "'tool_choice' must be auto, none, required, a function, a custom tool or allowed_tools.",
        "tool_choice",
    )


def _named(choice: Mapping[str, Any], names: Mapping[str, ToolName]) -> str:
    name, space = choice.get("name"), choice.get("namespace")
    if isinstance(name, str):
        if isinstance(space, str) and flat_name(space, name) in names:
            return flat_name(space, name)
        if name in names:
            return name
        flat = [k for k, v in names.items() if v.name == name]
        if len(flat) == 1:
            return flat[0]
    raise bad(f"tool_choice names {name!r}, which is not among the tools.", "tool_choice.name")


def _allowed(
    choice: Mapping[str, Any], specs: tuple[ToolSpec, ...], names: Mapping[str, ToolName]
) -> tuple[tuple[ToolSpec, ...], str | None]:
    mode = choice.get("mode", "auto")
    listed = choice.get("tools")
    if mode not in ("auto", "required") or not isinstance(listed, list):
        raise bad(
            "allowed_tools needs 'mode' (auto or required) and a 'tools' array.", "tool_choice"
        )
    keep = {
        _named(obj(t, "tool_choice.tools[]"), names)
        for t in listed
        if isinstance(t, Mapping) and t.get("type") in ("function", "custom")
    }
    left = tuple(s for s in specs if s.name in keep)
    if mode == "required" and not left:
        raise bad("allowed_tools requires a call but allows no function tool.", "tool_choice")
    return left, mode
