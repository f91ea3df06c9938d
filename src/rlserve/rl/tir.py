"""Tool-integrated reasoning (TIR): code the model writes between markers runs in the
sandbox, and its output is appended as a fenced block inside the same assistant turn:

    ...let me check.<tool_call>
    print(sum(range(10)))
    </tool_call>
    ```output
    45
    ```
    So the sum is 45.

This module holds the pure parts: where the code is, what runs, and what text goes back.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from rlserve._checks import check_int, check_number
from rlserve.sandbox import SandboxResult

_FENCE = re.compile(r"^\s*```[\w+.-]*[ \t]*\n(?P<code>.*?)\n?[ \t]*```\s*$", re.S)
_LAST = "__tir_last_value__"


@dataclass(frozen=True)
class TIRConfig:
    """How code is found and run. `begin`/`end` delimit code (an inner ```python fence is
    tolerated); `timeout_s` is the sandbox limit per run; output longer than
    `max_output_chars` keeps its start and end; with `show_last_expression` a final bare
    expression is printed (its repr, unless None), as in a notebook cell."""

    begin: str = "<tool_call>"
    end: str = "</tool_call>"
    timeout_s: float = 10.0
    max_output_chars: int = 2000
    show_last_expression: bool = True

    def __post_init__(self) -> None:
        for name in ("begin", "end"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        check_number("timeout_s", self.timeout_s, positive=True)
        check_int("max_output_chars", self.max_output_chars, minimum=16)


def extract_code(text: str, config: TIRConfig) -> str | None:
    """The code of the last `begin ... end` block in `text`, or None if there is none."""
    stop = text.rfind(config.end)
    if stop < 0:
        return None
    start = text.rfind(config.begin, 0, stop)
    if start < 0:
        return None
    return strip_fence(text[start + len(config.begin) : stop])


def strip_fence(code: str) -> str:
    """`code` without a surrounding ```python fence, blank edge lines and common indent."""
    match = _FENCE.match(code)
    body = match.group("code") if match else code
    lines = body.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return textwrap.dedent("\n".join(lines))


def show_last_expression(code: str) -> str:
    """`code` with a final bare expression printed (repr, unless None). Code that does not
    parse, or whose last statement is not an expression, is returned unchanged."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code  # the sandbox reports the error to the model
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        return code
    lines = code.split("\n")
    head = lines[: last.lineno - 1]
    first = lines[last.lineno - 1]
    # Wrap the expression's source in parentheses so multi-line expressions stay valid,
    # keeping the lines before it untouched (tracebacks keep their line numbers).
    prefix, expr = first[: _char_offset(first, last.col_offset)], lines[last.lineno - 1 :]
    expr[0] = expr[0][len(prefix) :]
    body = "\n".join(expr).rstrip()
    wrapped = "\n".join(
        [
            *head,
            f"{prefix}{_LAST} = (",
            body,
            ")",
            f"if {_LAST} is not None:",
            f"    print(repr({_LAST}))",
            "",
        ]
    )
    try:
        ast.parse(wrapped)
    except SyntaxError:  # e.g. a trailing ';' after the expression
        return code
    return wrapped


def code_to_run(code: str, config: TIRConfig) -> str:
    """What is sent to the sandbox for the model's `code`."""
    return show_last_expression(code) if config.show_last_expression else code


def format_output(result: SandboxResult, config: TIRConfig) -> str:
    """What the model sees of a run: stdout, then the error if it failed."""
    text = result.stdout
    if result.status == "error":
        text += result.stderr
    elif result.status == "timeout":
        text += f"TimeoutError: the code ran longer than {config.timeout_s:g} s\n"
    elif result.status == "memory":
        text += result.stderr if "MemoryError" in result.stderr else "MemoryError\n"
    elif result.status == "output_limit":
        text += "\n[output limit exceeded; the run was stopped]\n"
    return truncate(text, config.max_output_chars)


def truncate(text: str, limit: int) -> str:
    """`text`, or its start and end around a marker when longer than `limit`."""
    if len(text) <= limit:
        return text
    marker = "\n...[output truncated]...\n"
    keep = max(0, limit - len(marker))
    return text[: keep // 2] + marker + text[len(text) - (keep - keep // 2) :]


def output_block(output: str) -> str:
    """The text appended after the end marker: the output in an ```output fence."""
    if output and not output.endswith("\n"):
        output += "\n"
    return f"\n```output\n{output}```\n"


def missing_code_message(config: TIRConfig) -> str:
    """Shown to the model when it wrote the end marker without a begin marker."""
    return f"Error: no code found: {config.end} without a preceding {config.begin}\n"


def _char_offset(line: str, byte_offset: int) -> int:
    """ast column offsets count UTF-8 bytes; convert to a character index."""
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))
