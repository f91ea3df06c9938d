"""Run one reply's tool calls with user-supplied executors.

An executor is a plain callable `fn(**arguments)` returning the tool's output (a string,
or anything JSON-serialisable), or an awaitable of it. Failures are sorted in two:

- model errors go back to the model as the tool message "Error: ..." and the caller
  continues: a call that did not parse, an unknown tool, arguments that do not fit the
  executor's signature, or an executor raising `ToolError`;
- any other exception from an executor is an infrastructure error (`ToolResults.
  infra_error`): a rollout ends the trajectory with `infra_error=True`, so a trainer can
  drop it rather than penalise the policy.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlserve.tools.messages import tool_message
from rlserve.tools.parsers.types import ParseResult, ToolCall, ToolCallError

ToolExecutor = Callable[..., Any]


class ToolError(Exception):
    """Raise from an executor when the call itself is at fault (bad expression, invalid
    argument value): the message is shown to the model and the caller goes on."""


@dataclass
class ToolResults:
    """The tool messages of one reply (in call order), or the infrastructure error that
    stopped it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    infra_error: str | None = None


def calls_in_order(parsed: ParseResult) -> list[ToolCall | ToolCallError]:
    """Calls and malformed calls in the order the model wrote them."""
    return sorted([*parsed.calls, *parsed.errors], key=lambda item: item.start_pos)


def execute_calls(
    items: list[ToolCall | ToolCallError],
    executors: Mapping[str, ToolExecutor],
) -> ToolResults:
    """Run every call (blocking; meant for a worker thread)."""
    results = ToolResults()
    for item in items:
        if isinstance(item, ToolCallError):
            results.messages.append(tool_message(f"Error: {item.message}", name=item.name))
            continue
        try:
            text = _run_one(item, executors)
        except ToolError as exc:
            text = f"Error: {exc}"
        except Exception as exc:  # any other failure is the infrastructure's, not the model's
            results.infra_error = f"tool {item.name!r} raised {type(exc).__name__}: {exc}"
            return results
        results.messages.append(tool_message(text, name=item.name, call_id=item.id))
    return results


def _run_one(call: ToolCall, executors: Mapping[str, ToolExecutor]) -> str:
    fn = executors.get(call.name)
    if fn is None:
        known = ", ".join(sorted(executors)) or "none"
        raise ToolError(f"unknown tool {call.name!r} (available: {known})")
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as exc:
        raise ToolError(f"bad arguments for {call.name!r}: {exc}") from None
    except ValueError:
        pass  # no introspectable signature (some builtins): let the call decide
    value = fn(**call.arguments)
    if inspect.isawaitable(value):
        value = asyncio.run(_wait(value))
    return _as_text(value)


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
