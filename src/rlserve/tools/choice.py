"""OpenAI's `tool_choice`, enforced on the reply.

"required" and a named function force a call; "auto" and "none" force nothing. Two ways:

- `forced_call_grammar`: an llguidance Lark grammar for the whole call, in every format
  (`call_grammar.py`): the parser's opening for one of the allowed tools, arguments
  matching that tool's `parameters` schema as far as the format's notation carries it,
  the parser's closing. For JSON arguments this is SGLang's structural tag (begin,
  schema, end) in Lark.
- `forced_call_prefixes`: `SamplingParams.prefix_choices` forcing only the opening, up to
  where the arguments begin; the model writes the arguments freely.

The grammar is text: this layer does not import the engine (it compiles the grammar).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from rlserve.tools.call_grammar import (
    ARGUMENT_LAYOUT,
    BLOCKS,
    JSON_CALL_CLOSINGS,
    argument_schema,
    call_rules,
    lark_text,
)
from rlserve.tools.parsers import ToolIndex, get_parser
from rlserve.tools.parsers.reasoning import THINK_CLOSE

__all__ = [  # the grammar helpers are this module's API too
    "ARGUMENT_LAYOUT",
    "JSON_CALL_CLOSINGS",
    "added_token_texts",
    "argument_schema",
    "forced_call_grammar",
    "forced_call_prefixes",
    "forced_tool_names",
    "lark_text",
]


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
    """An llguidance Lark grammar for the call `tool_choice` forces in `parser`'s format,
    or None when it forces nothing.

    A named function gets one call; "required" one or more (exactly one when
    `parallel_tool_calls` is False), each to any offered tool. `token_texts`: the
    tokenizer's added tokens (`added_token_texts`); llguidance matches them only as
    tokens, so the grammar names them as such where the format's markup holds them.
    ValueError as `forced_tool_names`, or for an unknown `parser`."""
    names = forced_tool_names(tool_choice, tools)
    format_name = get_parser(parser).name
    if not names:
        return None
    markers = _token_markers(token_texts)
    parameters = ToolIndex(tools).parameters
    rules = []
    for i, name in enumerate(names):
        rules += call_rules(format_name, i, name, parameters[name], markers)
    calls = " | ".join(f"call_{i}" for i in range(len(names)))
    block = BLOCKS[format_name]
    several = tool_choice == "required" and parallel_tool_calls is not False
    start = [lark_text(_opening(think_open) + block.open, markers), "call"]
    if several:
        start.append(f"({lark_text(block.separator, markers)} call)*")
    start.append(_closing(block.close, block.separator if several else "", markers))
    return "\n".join([f"start: {' '.join(filter(None, start))}", f"call: {calls}", *rules]) + "\n"


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


def _closing(close: str, separator: str, markers: Sequence[str]) -> str:
    """The block's closing; where it starts with the separator, that part is its own
    literal, so the lexer need not tell the two apart (llguidance gives up on that
    choice after free text: "ParserTooComplex")."""
    if separator and close.startswith(separator) and close != separator:
        return f"{lark_text(separator, markers)} {lark_text(close[len(separator) :], markers)}"
    return lark_text(close, markers)


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
