"""Pythonic calls (Llama 3.2/4 style): ``[search(query="x", k=5), other()]`` or a bare
``search(query="x")`` on its own line. Parsed with ``ast``; arguments must be literals and are
read with ``ast.literal_eval`` -- nothing is ever evaluated."""

from __future__ import annotations

import ast
import re

from rlserve.tools.parsers.base import Match, ScanContext, ToolParser, skip_space
from rlserve.tools.parsers.schema import ToolIndex, build_call, jsonable
from rlserve.tools.parsers.types import ToolCall, ToolCallError

IDENT = re.compile(r"[A-Za-z_][\w.]*")
CALL_START = re.compile(r"\s*[A-Za-z_][\w.]*\s*\(")
PAIRS = {"(": ")", "[": "]", "{": "}"}
INVALID = -1
_BAD_SOURCE = (SyntaxError, ValueError, TypeError, MemoryError, RecursionError)


class PythonicParser(ToolParser):
    """A call block must occupy whole lines: it starts a line (after indentation) and
    nothing but whitespace follows it on its last line. A list is a call list when every
    element looks like ``name(...)``; each element then becomes a call or an error (unknown
    tool, positional or non-literal arguments). A bare call whose name is not an offered tool
    is left as text, since code in prose looks the same."""

    name = "pythonic"

    def call_prefix(self, name: str) -> str:
        return f"[{name}("

    def find_candidate(self, ctx: ScanContext, pos: int) -> int | None:
        text = ctx.text
        indent = pos
        while indent > ctx.origin and text[indent - 1] in " \t":
            indent -= 1
        if not ctx.at_line_start(indent):  # mid-line: only the next line can hold a call
            newline = text.find("\n", pos)
            if newline == -1:
                return None
            pos = newline + 1
        while True:
            first = skip_space(text, pos, " \t")
            if first == len(text):
                return None if ctx.final else first
            if text[first] == "[" or IDENT.match(text, first):
                return first
            newline = text.find("\n", first)
            if newline == -1:
                return None
            pos = newline + 1

    def match(self, ctx: ScanContext, start: int) -> Match | None:
        text = ctx.text
        opener = start
        if text[start] != "[":
            ident = IDENT.match(text, start)
            if ident is None:
                return ctx.not_a_call(start)
            opener = skip_space(text, ident.end(), " \t")
            if opener == len(text) and not ctx.final:
                return None
            if opener == len(text) or text[opener] != "(":
                return ctx.not_a_call(start, ident.end())
        end, commas = bracket_extent(text, opener)
        if end is None and not ctx.final:
            return None
        if end is None or end == INVALID:
            return ctx.not_a_call(start, opener + 1)
        tail = skip_space(text, end, " \t\r")
        if tail == len(text) and not ctx.final:
            return None
        if tail < len(text) and text[tail] != "\n":
            return ctx.not_a_call(start, end)
        bare = opener != start
        spans = [(start, end)] if bare else element_spans(text, opener, end, commas)
        items = _items(text, spans, bare, ctx.tools)
        return ctx.not_a_call(start, end) if items is None else Match(end, tuple(items))


def bracket_extent(text: str, opener: int) -> tuple[int | None, list[int]]:
    """(end, top-level comma positions) of the bracket opening at ``opener``; end is None
    when not closed yet and INVALID when the brackets or a string literal are broken."""
    stack = [PAIRS[text[opener]]]
    commas: list[int] = []
    i = opener + 1
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            after = _string_end(text, i)
            if after is None or after == INVALID:
                return after, commas
            i = after
            continue
        if ch in PAIRS:
            stack.append(PAIRS[ch])
        elif ch in ")]}":
            if ch != stack.pop():
                return INVALID, commas
            if not stack:
                return i + 1, commas
        elif ch == "," and len(stack) == 1:
            commas.append(i)
        i += 1
    return None, commas


def _string_end(text: str, i: int) -> int | None:
    quote = text[i]
    triple = text.startswith(quote * 3, i)
    j = i + (3 if triple else 1)
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
        elif triple and text.startswith(quote * 3, j):
            return j + 3
        elif not triple and ch == quote:
            return j + 1
        elif not triple and ch == "\n":
            return INVALID
        else:
            j += 1
    return None


def element_spans(text: str, opener: int, end: int, commas: list[int]) -> list[tuple[int, int]]:
    """Positions of the (whitespace-trimmed, non-empty) elements of a bracketed list."""
    bounds = zip([opener + 1, *(c + 1 for c in commas)], [*commas, end - 1], strict=True)
    spans = []
    for lo, hi in bounds:
        lo = skip_space(text, lo)
        while hi > lo and text[hi - 1].isspace():
            hi -= 1
        if hi > lo:
            spans.append((lo, hi))
    return spans


def _items(
    text: str, spans: list[tuple[int, int]], bare: bool, tools: ToolIndex
) -> list[ToolCall | ToolCallError] | None:
    if not spans or not all(CALL_START.match(text, lo, hi) for lo, hi in spans):
        return None
    if bare:
        name = IDENT.match(text, spans[0][0])
        if name is not None and tools.unknown(name.group()) is not None:
            return None
    return [call_item(text, lo, hi, tools) for lo, hi in spans]


def call_item(text: str, start: int, end: int, tools: ToolIndex) -> ToolCall | ToolCallError:
    """Read ``name(key=literal, ...)`` at ``text[start:end]``."""
    raw = text[start:end]
    try:
        node = ast.parse(raw, mode="eval").body
    except _BAD_SOURCE:
        return ToolCallError("invalid Python call syntax", raw, start, end)
    name = _dotted_name(node.func) if isinstance(node, ast.Call) else None
    if name is None:
        return ToolCallError("not a call of a named function", raw, start, end)
    if node.args:
        message = "positional arguments are not supported; use keyword arguments"
        return ToolCallError(message, raw, start, end, name)
    args: dict[str, object] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            return ToolCallError("**kwargs is not supported", raw, start, end, name)
        try:
            args[keyword.arg] = jsonable(ast.literal_eval(keyword.value))
        except _BAD_SOURCE:
            message = f"argument {keyword.arg!r} is not a literal value"
            return ToolCallError(message, raw, start, end, name)
    return build_call(name, args, raw, start, end, tools)


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None
