"""JSON schema -> GBNF rules, within bounds llama.cpp can compile and sample.

Repetition is written compactly (``char{0,50}``): llama.cpp expands ``x{m,n}`` into a chain of
rules without recursing while it parses. Its parser refuses a minimum above 2000 repetitions
and silently drops a maximum above that, so lengths and item counts beyond ``LIMITS`` are
refused here with a 400 that names the keyword, rather than crashing or being ignored. The
other bounds keep a request from making the server build or compile a huge grammar.

Supported: ``type`` (one or a list), ``properties`` / ``required`` (required members first, in
order, then any of the optional ones), ``items``, ``minItems`` / ``maxItems``, ``minLength`` /
``maxLength``, ``enum``, ``const``, ``anyOf`` / ``oneOf``, ``allOf`` of objects, ``$ref`` to
``#/$defs`` or ``#/definitions`` (recursion allowed), ``nullable``. Other keywords (``pattern``,
``format``, numeric ranges) do not constrain the output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from impetus_cli.errors import ImpetusError


@dataclass(frozen=True)
class Limits:
    """What one schema may ask. Real clients (OpenAI structured outputs, instructor, pydantic
    models, agents' tool lists) stay far below every one of these."""

    length: int = 2000  # minLength / maxLength: llama.cpp's own cap on one repetition
    items: int = 2000  # minItems / maxItems, for the same reason
    depth: int = 32  # objects and arrays inside one another
    properties: int = 1000  # properties in the whole schema
    grammar_bytes: int = 512 * 1024  # the GBNF text


LIMITS = Limits()

# Characters exclude surrogates and code points past U+10FFFF: llama.cpp decodes any 4-byte
# pattern, so byte-level tokens could otherwise spell invalid UTF-8 inside a string.
PRIMITIVES = {
    "ws": r"[ \t\n]{0,20}",
    "char": r'[^"\\\x7F\x00-\x1F\uD800-\uDFFF\U00110000-\U001FFFFF] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )',
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ( [0-9] | [1-9] [0-9]{0,15} )',
    "number": r'integer ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,4} )?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": r"object | array | string | number | boolean | null",
    "object": r'"{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"',
    "array": r'"[" ws ( value ( ws "," ws value )* )? ws "]"',
}


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def rule_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]+", "-", text).strip("-").lower() or "x"


class GrammarBuilder:
    """Collects GBNF rules; ``schema(...)`` adds the rules of one JSON schema."""

    def __init__(self, param: str, limits: Limits = LIMITS):
        self.param, self.limits = param, limits
        self.rules: dict[str, str] = {}
        self.used: set[str] = set()
        self.n_properties = 0
        self.defs: Mapping[str, Any] = {}

    def refuse(self, message: str) -> ImpetusError:
        return ImpetusError(
            message,
            "Loosen the schema; a constrained reply cannot be that large.",
            param=self.param,
        )

    def prim(self, name: str) -> str:
        """A shared primitive rule (and the ones it uses)."""
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dep in re.findall(r"[a-z]+", PRIMITIVES[name]):
                if dep in PRIMITIVES and dep != name:
                    self.prim(dep)
        return name

    def add(self, base: str, body: str) -> str:
        name, n = rule_name(base), 1
        while name in self.rules or name in PRIMITIVES:
            n += 1
            name = f"{rule_name(base)}-{n}"
        self.rules[name] = body
        return name

    def text(self, root: str) -> str:
        lines = [f"root ::= {root}"] + [f"{k} ::= {v}" for k, v in self.rules.items()]
        out = "\n".join(lines) + "\n"
        if len(out.encode()) > self.limits.grammar_bytes:
            raise self.refuse(
                f"The schema makes a grammar of {len(out.encode())} bytes; the limit is "
                f"{self.limits.grammar_bytes}."
            )
        return out

    def schema(self, schema: Any, name: str, depth: int = 0) -> str:
        """A GBNF expression (usually a rule name) for values of ``schema``."""
        if depth == 0 and isinstance(schema, Mapping):
            self.defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
        if depth > self.limits.depth:
            raise self.refuse(f"The schema nests deeper than {self.limits.depth} levels.")
        if schema is True or schema == {} or not isinstance(schema, Mapping):
            return self.prim("value")
        expr = self._alternatives(schema, name, depth)
        if schema.get("nullable") is True:
            expr = f"( {expr} | null )"
            self.prim("null")
        return expr

    def _alternatives(self, schema: Mapping[str, Any], name: str, depth: int) -> str:
        if "$ref" in schema:
            return self._ref(str(schema["$ref"]), depth)
        if "const" in schema:
            return literal(json.dumps(schema["const"], ensure_ascii=False))
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            values = (literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"])
            return "( " + " | ".join(values) + " )"
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                parts = [
                    self.schema(s, f"{name}-{i}", depth + 1) for i, s in enumerate(schema[key])
                ]
                return self.add(name, " | ".join(parts))
        if isinstance(schema.get("allOf"), list):
            return self.schema(_merge(schema), name, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            one = [self.schema({**schema, "type": k}, f"{name}-{k}", depth) for k in kind]
            return self.add(name, " | ".join(one)) if one else self.prim("value")
        return self._typed(schema, kind, name, depth)

    def _typed(self, schema: Mapping[str, Any], kind: Any, name: str, depth: int) -> str:
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, name, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "string":
            return self._string(schema, name)
        if kind in ("integer", "number", "boolean", "null"):
            return self.prim(kind)
        return self.prim("value")

    def _ref(self, ref: str, depth: int) -> str:
        key = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or key not in self.defs:
            raise self.refuse(f"The schema's $ref {ref!r} does not point into its $defs.")
        name = f"ref-{rule_name(key)}"
        if name not in self.rules:
            self.rules[name] = ""  # reserved first: a definition may refer to itself
            self.rules[name] = self.schema(self.defs[key], f"{name}-body", depth + 1)
        return name

    def _bound(
        self, schema: Mapping[str, Any], lo_key: str, hi_key: str, cap: int
    ) -> tuple[int, int | None]:
        lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
        for key, value in ((lo_key, lo), (hi_key, hi)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.refuse(f"{key} must be a non-negative integer.")
            if value > cap:
                raise self.refuse(
                    f"{key} {value} is more than the {cap} a constrained reply allows."
                )
        if hi is not None and hi < lo:
            raise self.refuse(f"{hi_key} is smaller than {lo_key}.")
        return lo, hi

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        lo, hi = self._bound(schema, "minLength", "maxLength", self.limits.length)
        if lo == 0 and hi is None:
            return self.prim("string")
        self.prim("char")
        reps = f"{{{lo},{hi}}}" if hi is not None else f"{{{lo},}}"
        return self.add(f"{name}-string", f'"\\"" char{reps} "\\""')

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> str:
        lo, hi = self._bound(schema, "minItems", "maxItems", self.limits.items)
        item = self.schema(schema.get("items", True), f"{name}-item", depth + 1)
        self.prim("ws")
        more = f'( ws "," ws {item} )'
        # A repetition goes in a rule of its own: llama.cpp counts the rules a repeated group
        # makes, times the repetitions around it, against its cap of 2000.
        if hi == 0:
            body = '"[" ws "]"'
        elif lo == 0:
            tail = f"{more}{{0,{hi - 1}}}" if hi is not None else f"{more}*"
            body = f'"[" ws {self.add(f"{name}-items", f"{item} {tail}")}? ws "]"'
        else:
            tail = f"{more}{{{lo - 1},{hi - 1}}}" if hi is not None else f"{more}{{{lo - 1},}}"
            body = f'"[" ws {item} {tail} ws "]"'
        return self.add(name, body)

    def _object(self, schema: Mapping[str, Any], name: str, depth: int) -> str:
        props = schema.get("properties")
        if not isinstance(props, Mapping) or not props:
            if schema.get("additionalProperties") is False:
                return self.add(f"{name}-empty", '"{" ws "}"')
            return self.prim("object")
        self.n_properties += len(props)
        if self.n_properties > self.limits.properties:
            raise self.refuse(f"The schema has more than {self.limits.properties} properties.")
        required = [k for k in schema.get("required", []) if k in props]
        self.prim("ws")
        members = {
            k: f'{literal(json.dumps(k, ensure_ascii=False))} ws ":" ws '
            + self.schema(v, f"{name}-{k}", depth + 1)
            for k, v in props.items()
        }
        optional = [members[k] for k in props if k not in required]
        body = ' ws "," ws '.join(members[k] for k in required)
        if optional:
            any_opt = self.add(f"{name}-opt", " | ".join(optional))
            n = len(optional)
            if required:
                body += f' ( ws "," ws {any_opt} ){{0,{n}}}'
            else:
                several = self.add(
                    f"{name}-some", f'{any_opt} ( ws "," ws {any_opt} ){{0,{n - 1}}}'
                )
                body = f"{several}?"
        return self.add(name, f'"{{" ws {body} ws "}}"')


def _merge(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``allOf`` of object schemas as one object schema."""
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    props: dict[str, Any] = dict(out.get("properties", {}))
    required: list[str] = list(out.get("required", []))
    for part in schema["allOf"]:
        if isinstance(part, Mapping):
            props.update(part.get("properties", {}))
            required += [r for r in part.get("required", []) if r not in required]
            out.setdefault("type", part.get("type"))
    out.update(properties=props, required=required)
    return out


def schema_grammar(schema: Mapping[str, Any], *, param: str, limits: Limits = LIMITS) -> str:
    """A whole grammar (``root``) for one JSON value of ``schema``, surrounded by spaces."""
    builder = GrammarBuilder(param, limits)
    value = builder.schema(schema, "value-of-schema")
    builder.prim("ws")
    return builder.text(f"ws {value} ws")
