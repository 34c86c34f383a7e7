"""OpenAI ``response_format`` -> a llama.cpp GBNF grammar (GGUF engines constrain sampling).

A JSON schema goes through json_grammar.py, which bounds what a schema may ask (a request
must never be able to crash the server or make it build a huge grammar) and answers a 400
beyond that; forced tool calls are in tool_grammar.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.json_grammar import schema_grammar

# Any JSON object (the json_object mode): written for this purpose, in GBNF.
JSON_OBJECT = r"""
root   ::= ws object ws
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
array  ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F\uD800-\uDFFF\U00110000-\U001FFFFF] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( [0-9] | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]{1,15} )?
ws     ::= [ \t\n]{0,20}
"""


def grammar_for(response_format: Mapping[str, Any] | None) -> str | None:
    """None for plain text; a GBNF grammar for json_object or json_schema."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise ImpetusError(
                "response_format.json_schema.schema must be an object.", param="response_format"
            )
        return schema_grammar(schema, param="response_format")
    raise ImpetusError(
        f"Unknown response_format type {kind!r}.",
        "Use text, json_object or json_schema.",
        param="response_format",
    )
