"""llguidance Lark grammars for whole tool calls, one per tool-call format.

Each format's call is its parser's opening for one tool, that tool's arguments in the
format's own notation, and its closing; several calls sit in the format's block:

- hermes, json, llama3_json: the arguments are one JSON object (`%json` of the tool's
  `parameters`), as SGLang's structural tag (begin, schema, end).
- qwen3_coder: ``<tool_call>\\n<function=f>\\n<parameter=p>\\nvalue\\n</parameter>\\n
  </function>\\n</tool_call>``; xml: ``<function_calls>\\n<invoke name="f">\\n<parameter
  name="p">value</parameter>\\n</invoke>\\n</function_calls>``. A value is text its parser
  converts by the property's type (`schema.convert_value`): numbers, booleans, null,
  objects and arrays are JSON under the property's schema, enums are their literals,
  other strings free text up to the closing tag.
- pythonic: ``[f(p=value, q=value)]``, values Python literals (`True` / `False` / `None`;
  strings, numbers and containers JSON, which Python reads the same when they hold no
  booleans or nulls).

Text formats list the declared properties in schema order (required ones always,
optional ones maybe), so the arguments hold no unknown keys; a tool without `properties`
gets any parameter names with free values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlserve.tools.parsers import get_parser

# What ends a call after its arguments object, per format with JSON arguments.
JSON_CALL_CLOSINGS = {"hermes": "}\n</tool_call>", "json": "}", "llama3_json": "}"}
# Arguments laid out as chat templates write them (`tojson`, Python's json.dumps): no free
# whitespace, which a small model could otherwise run on with until max_tokens.
# `lenient`: schema features llguidance lacks (unknown `format`s) are not enforced.
ARGUMENT_LAYOUT = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": True,
}
FREE_TEXT = "/(?s:.*)/"  # any text: with `stop`, up to the closing tag
NAME = "/[A-Za-z_][A-Za-z0-9_.-]*/"  # a parameter name when the tool declares none
_PYTHON_WORDS = {"boolean": '"True" | "False"', "null": '"None"'}


@dataclass(frozen=True)
class Block:
    """Where a format's calls sit: `open` before the first, `separator` between, `close`
    after the last (Qwen's templates put calls on their own lines)."""

    open: str = ""
    separator: str = "\n"
    close: str = ""


BLOCKS = {
    **{parser: Block() for parser in JSON_CALL_CLOSINGS},
    "qwen3_coder": Block(),
    "xml": Block("<function_calls>\n", "\n", "\n</function_calls>"),
    "pythonic": Block("[", ", ", "]"),
}


def call_rules(
    parser: str, index: int, name: str, parameters: Mapping[str, Any], markers: Sequence[str]
) -> list[str]:
    """The Lark rules of `call_{index}`: one call of `name` in `parser`'s format."""
    rule = f"call_{index}"
    if parser in JSON_CALL_CLOSINGS:
        opening = lark_text(_json_opening(parser, name), markers)
        closing = lark_text(JSON_CALL_CLOSINGS[parser], markers)
        schema = json.dumps(argument_schema(parameters))
        return [f"{rule}: {opening} args_{index} {closing}", f"args_{index}: %json {schema}"]
    if parser == "pythonic":
        return _pythonic_call(rule, name, parameters)
    return _markup_call(parser, rule, name, parameters, markers)


def _json_opening(parser: str, name: str) -> str:
    return get_parser(parser).call_prefix(name)


@dataclass(frozen=True)
class Markup:
    """A markup format's call: `opening` / `closing` around its parameters, each
    `tag_open` name `tag_close`, then `value_open`, the value and `stop`, then a newline.
    Free text ends at `stop` and the newline together: llguidance refuses a token that
    runs on past a stop string, and tokenizers join `>` and the newline."""

    opening: str
    closing: str
    tag_open: str
    tag_close: str
    value_open: str
    stop: str


MARKUPS = {
    "xml": Markup(
        '<invoke name="{}">\n', "</invoke>", '<parameter name="', '">', "", "</parameter>"
    ),
    "qwen3_coder": Markup(
        "<tool_call>\n<function={}>\n",
        "</function>\n</tool_call>",
        "<parameter=",
        ">",
        "\n",
        "\n</parameter>",
    ),
}


def _markup_call(
    parser: str, rule: str, name: str, parameters: Mapping[str, Any], markers: Sequence[str]
) -> list[str]:
    markup = MARKUPS[parser]
    after, stop = lark_text("\n", markers), lark_text(markup.stop, markers)
    free_stop = markup.stop + "\n"
    items, rules = [], []
    properties, required = _properties(parameters)
    for k, (key, schema) in enumerate(properties.items()):
        value = f"{rule}_{k}"
        tag = markup.tag_open + key + markup.tag_close + markup.value_open
        rules += _text_value(value, schema, free_stop)
        free = _is_free(schema)
        parts = [lark_text(tag, markers), value, *([] if free else [stop, after])]
        item = " ".join(filter(None, parts))
        items.append(item if key in required else f"({item})?")
    if not properties:  # no declared parameters: any names, free values
        head = f"{lark_text(markup.tag_open, markers)} {NAME} "
        head += lark_text(markup.tag_close + markup.value_open, markers)
        rules.append(f"{rule}_any[stop={json.dumps(free_stop)}]: {FREE_TEXT}")
        items.append(f"({head} {rule}_any)*")
    opening = lark_text(markup.opening.format(name), markers)
    body = " ".join([opening, *items, lark_text(markup.closing, markers)])
    return [f"{rule}: {body}", *rules]


def _text_value(rule: str, schema: Mapping[str, Any], stop: str) -> list[str]:
    """The rule of one markup value; free text ends at `stop`, which it consumes."""
    literals = _literals(schema)
    if literals is not None:
        text = [v if isinstance(v, str) else json.dumps(v) for v in literals]
        return [f"{rule}: {' | '.join(json.dumps(t, ensure_ascii=False) for t in text)}"]
    if _is_free(schema):
        return [f"{rule}[stop={json.dumps(stop, ensure_ascii=False)}]: {FREE_TEXT}"]
    return [f"{rule}: %json {json.dumps(_value_schema(schema))}"]


def _is_free(schema: Mapping[str, Any]) -> bool:
    """A value written as plain text: a string (or untyped) without enum or const."""
    return _literals(schema) is None and _kind(schema) in ("string", None)


def _pythonic_call(rule: str, name: str, parameters: Mapping[str, Any]) -> list[str]:
    properties, required = _properties(parameters)
    rules, items = [], []
    for k, (key, schema) in enumerate(properties.items()):
        value = f"{rule}_{k}"
        rules.append(f"{value}: {_python_value(schema)}")
        items.append((f"{json.dumps(key + '=')} {value}", key in required))
    if not properties:
        rules.append(f'{rule}_any: {NAME} "=" %json {json.dumps(_value_schema({}))}')
        arguments = f'({rule}_any (", " {rule}_any)*)?'
    else:
        arguments = _comma_list(items)
    call = " ".join(filter(None, [json.dumps(name + "(", ensure_ascii=False), arguments, '")"']))
    return [f"{rule}: {call}", *rules]


def _python_value(schema: Mapping[str, Any]) -> str:
    literals = _literals(schema)
    if literals is not None:
        return " | ".join(json.dumps(_python_literal(v), ensure_ascii=False) for v in literals)
    kind = _kind(schema)
    if kind in _PYTHON_WORDS:
        return _PYTHON_WORDS[kind]
    return f"%json {json.dumps(_value_schema(schema))}"


def _python_literal(value: Any) -> str:
    if value is True or value is False or value is None:
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _comma_list(items: list[tuple[str, bool]]) -> str:
    """`items` (expression, required) in order, ", "-separated, optional ones maybe."""
    rest = ""  # the items after one, each with its separator
    first = ""  # the list from here on, starting with its first present item
    for expr, needed in reversed(items):
        with_first = f"{expr} {rest}".strip()
        if needed:
            first = with_first
        else:
            first = f"({with_first} | {first})" if first else f"({with_first})?"
        rest = f'", " {expr} {rest}' if needed else f'(", " {expr})? {rest}'
        rest = rest.strip()
    return first


def _properties(parameters: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    properties = parameters.get("properties")
    properties = dict(properties) if isinstance(properties, Mapping) else {}
    required = parameters.get("required")
    names = set(required) if isinstance(required, list) else set()
    return {k: v if isinstance(v, Mapping) else {} for k, v in properties.items()}, names


def _literals(schema: Mapping[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    enum = schema.get("enum")
    return list(enum) if isinstance(enum, list) and enum else None


def _kind(schema: Mapping[str, Any]) -> str | None:
    """The property's type as the parsers read it (`ToolIndex.param_type`)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


def _value_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    value = dict(schema)
    kind = _kind(schema)
    if kind is not None:
        value["type"] = kind
    value.setdefault("x-guidance", ARGUMENT_LAYOUT)
    return value


def argument_schema(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema a call's arguments must match: the tool's `parameters` (an object
    when they do not say), in the layout of `ARGUMENT_LAYOUT` unless they set their own
    llguidance options (`x-guidance`)."""
    schema = dict(parameters)
    schema.setdefault("type", "object")
    schema.setdefault("x-guidance", ARGUMENT_LAYOUT)
    return schema


def lark_text(text: str, markers: Sequence[str] = ()) -> str:
    """`text` as a Lark expression: string literals, with the `markers` it holds written as
    token references (`<tool_call>`). `markers` longest first."""
    parts: list[str] = []
    plain = start = 0
    while start < len(text):
        marker = next((m for m in markers if text.startswith(m, start)), None)
        if marker is None:
            start += 1
            continue
        if plain < start:
            parts.append(json.dumps(text[plain:start], ensure_ascii=False))
        parts.append(marker)
        start = plain = start + len(marker)
    if plain < len(text):
        parts.append(json.dumps(text[plain:], ensure_ascii=False))
    return " ".join(parts)
