"""OpenAI's `tool_choice`, enforced by forcing how the reply starts.

"required" and a named function become `SamplingParams.prefix_choices`: the reply must open
with a call to one of the allowed tools, in the parser's format, up to where the arguments
begin; the model writes the arguments itself. "auto" and "none" force nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlserve.tools.parsers import ToolIndex, get_parser
from rlserve.tools.parsers.reasoning import THINK_CLOSE


def forced_call_prefixes(
    tool_choice: str | Mapping[str, Any] | None,
    tools: Sequence[Mapping[str, Any]] | None,
    parser: str,
    *,
    think_open: bool = False,
) -> list[str]:
    """`prefix_choices` enforcing `tool_choice` (ValueError naming what is wrong).

    `tools` must be usable (see `validate_tools`): they are read only when a call is
    forced ("auto" and "none" do not look at them), so check them where the request comes
    in, as the server's `check_request_tools` and `Engine.chat` do.
    `think_open`: the prompt opened a `<think>` block, which a forced call closes first.
    """
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
    opening = f"{THINK_CLOSE}\n\n" if think_open else ""
    format_ = get_parser(parser)
    return [opening + format_.call_prefix(name) for name in names]


def _named_function(tool_choice: Mapping[str, Any]) -> str:
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise ValueError(
            'a named tool_choice must be {"type": "function", '
            f'"function": {{"name": ...}}}}, got {dict(tool_choice)!r}'
        )
    return name
