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


GRAMMAR_BYTES = 512 * 1024  # as json_grammar's bound on the grammars it writes


def user_grammar(text: str) -> str:
    """A client's own GBNF (llama-server's ``grammar`` field), checked before llama.cpp sees
    it: bounded in size, and without token references (``<[id]>``, ``<|name|>``), which make
    llama.cpp abort the whole process when a sampled token does not fit them."""
    if len(text.encode()) > GRAMMAR_BYTES:
        raise ImpetusError(f"The grammar is larger than {GRAMMAR_BYTES} bytes.", param="grammar")
    if _token_reference(text):
        raise ImpetusError(
            "Token references (<[id]> or <token>) are not supported in grammars.",
            "Write the token's text as a string literal instead.",
            param="grammar",
        )
    return text


def _token_reference(text: str) -> bool:
    """True if a '<' stands outside string literals, character classes and comments."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in '"[':
            close = '"' if ch == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch == "<":
            return True
        i += 1
    return False
