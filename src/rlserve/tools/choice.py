"""OpenAI's `tool_choice`, enforced on the reply.

"required" and a named function force a call; "auto" and "none" force nothing. Two ways:

- `forced_call_grammar`: an llguidance Lark grammar for the whole call, for the formats
  whose arguments are JSON (hermes, json, llama3_json): the parser's opening for one of
  the allowed tools, arguments matching that tool's `parameters` schema (`%json`), the
  parser's closing. This is SGLang's structural tag (begin, schema, end) in Lark.
- `forced_call_prefixes`: `SamplingParams.prefix_choices` forcing only the opening, up to
  where the arguments begin; the model writes the arguments freely. The only way for the
  formats whose arguments are not JSON (xml, pythonic/function, qwen3_coder).

The grammar is text: this layer does not import the engine (it compiles the grammar).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from rlserve.tools.parsers import ToolIndex, get_parser
from rlserve.tools.parsers.reasoning import THINK_CLOSE

# What ends a call after its arguments object, per format with JSON arguments.
JSON_CALL_CLOSINGS = {"hermes": "}\n</tool_call>", "json": "}", "llama3_json": "}"}
CALL_SEPARATOR = "\n"  # between calls when "required" allows several (Qwen's template)
# Arguments laid out as chat templates write them (`tojson`, Python's json.dumps): no free
# whitespace, which a small model could otherwise run on with until max_tokens.
# `lenient`: schema features llguidance lacks (unknown `format`s) are not enforced.
ARGUMENT_LAYOUT = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": True,
}


def forced_tool_names(
    tool_choice: str | Mapping[str, Any] | None, tools: Sequence[Mapping[str, Any]] | None
) -> list[str]:
    """The tools one of which the reply must call ([] for "auto", "none" and None).

    ValueError naming what is wrong. `tools` are read only when a call is forced, so check
    them where the request comes in (`validate_tools`), as the server's
    `check_request_tools` and `Engine.chat` do."""
    if tool_choice is None or tool_choice in ("auto", "none"):
        return []
    offered = list(ToolIndex(tools).parameters)
    if tool_choice == "required":
        names = offered
    elif isinstance(tool_choice, Mapping):
        names = [_named_function(tool_choice)]
        if names[0] not in offered:
            raise ValueError(f"tool_choice names {names[0]!r}, which is not among the tools")
    else:
        raise ValueError(
            'tool_choice must be "auto", "none", "required" or '
            f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}'
        )
    if not names:
        raise ValueError("tool_choice requires a tool call but no tools were given")
    return names


def forced_call_prefixes(
    tool_choice: str | Mapping[str, Any] | None,
    tools: Sequence[Mapping[str, Any]] | None,
    parser: str,
    *,
    think_open: bool = False,
) -> list[str]:
    """`prefix_choices` enforcing `tool_choice` (ValueError naming what is wrong; see
    `forced_tool_names`). `think_open`: the prompt opened a `<think>` block, which a
    forced call closes first."""
    names = forced_tool_names(tool_choice, tools)
    if not names:
        return []
    format_ = get_parser(parser)
    return [_opening(think_open) + format_.call_prefix(name) for name in names]


def forced_call_grammar(
    tool_choice: str | Mapping[str, Any] | None,
    tools: Sequence[Mapping[str, Any]] | None,
    parser: str,
    *,
    think_open: bool = False,
    token_texts: Collection[str] = (),
    parallel_tool_calls: bool | None = None,
) -> str | None:
    """An llguidance Lark grammar for the call `tool_choice` forces, or None when it forces
    nothing or `parser`'s arguments are not JSON (use `forced_call_prefixes` then).

    A named function gets one call; "required" one or more (exactly one when
    `parallel_tool_calls` is False), each to any offered tool. `token_texts`: the
    tokenizer's added tokens (`added_token_texts`); llguidance matches them only as
    tokens, so the grammar names them as such where the format's markup holds them.
    ValueError as `forced_tool_names`, or for an unknown `parser`."""
    names = forced_tool_names(tool_choice, tools)
    format_ = get_parser(parser)
    if not names or parser not in JSON_CALL_CLOSINGS:
        return None
    markers = _token_markers(token_texts)
    parameters = ToolIndex(tools).parameters
    closing = lark_text(JSON_CALL_CLOSINGS[parser], markers)
    rules = []
    for i, name in enumerate(names):
        opening = lark_text(format_.call_prefix(name), markers)
        rules.append(f"call_{i}: {opening} args_{i} {closing}")
        rules.append(f"args_{i}: %json {json.dumps(argument_schema(parameters[name]))}")
    calls = " | ".join(f"call_{i}" for i in range(len(names)))
    several = tool_choice == "required" and parallel_tool_calls is not False
    start = [lark_text(_opening(think_open), markers), "call"]
    if several:
        start.append(f"({lark_text(CALL_SEPARATOR, markers)} call)*")
    return "\n".join([f"start: {' '.join(filter(None, start))}", f"call: {calls}", *rules]) + "\n"


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


def added_token_texts(tokenizer: Any) -> tuple[str, ...]:
    """The texts of a Hugging Face tokenizer's added tokens (`<tool_call>` included, special
    or not: llguidance treats every added token as special)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return tuple(dict.fromkeys(token.content for token in added.values()))


def _token_markers(token_texts: Collection[str]) -> list[str]:
    """The token texts a Lark grammar can name, `<...>` without spaces, longest first."""
    names = {
        t
        for t in token_texts
        if isinstance(t, str)
        and len(t) > 2
        and t[0] == "<"
        and t[-1] == ">"
        and not any(c.isspace() for c in t)
    }
    return sorted(names, key=len, reverse=True)


def _opening(think_open: bool) -> str:
    return f"{THINK_CLOSE}\n\n" if think_open else ""


def _named_function(tool_choice: Mapping[str, Any]) -> str:
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise ValueError(
            'a named tool_choice must be {"type": "function", '
            f'"function": {{"name": ...}}}}, got {dict(tool_choice)!r}'
        )
    return name
