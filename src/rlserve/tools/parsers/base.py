"""The scanning framework every format plugs into, shared by one-shot and streaming parsing.

A format finds *candidate* positions (where a call may begin) and *matches* a candidate:
either it is ordinary text, or a region holding calls / errors, or (while streaming) more
text is needed to tell. The driver only commits results that cannot change when more text
arrives, which is what makes streaming output identical to a one-shot parse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from rlserve.tools.parsers.reasoning import partial_marker_start, split_reasoning
from rlserve.tools.parsers.schema import ToolIndex, Tools
from rlserve.tools.parsers.types import ParseResult, ToolCall, ToolCallError


@dataclass(frozen=True)
class Content:
    """Ordinary text ``text[start:end]``."""

    start: int
    end: int


Segment = Content | ToolCall | ToolCallError


@dataclass(frozen=True)
class Match:
    """What a candidate turned out to be: ``text[start:end]`` is plain content
    (``content=True``) or a tool-call region whose ``items`` replace it."""

    end: int
    items: tuple[ToolCall | ToolCallError, ...] = ()
    content: bool = False


@dataclass(frozen=True)
class ScanContext:
    """The text being scanned; ``final`` once no more text will come; ``origin`` is where
    the body (after any reasoning) starts, which counts as a line start."""

    text: str
    tools: ToolIndex
    final: bool
    origin: int

    def at_line_start(self, i: int) -> bool:
        return i == self.origin or (i > self.origin and self.text[i - 1] == "\n")

    def not_a_call(self, start: int, end: int | None = None) -> Match:
        """``text[start:end]`` is content (default: just the character at ``start``)."""
        return Match(start + 1 if end is None else end, content=True)


class ToolParser(ABC):
    """Base class of the format parsers; subclasses set ``name`` (and ``markers`` when calls
    open with literal tags) and implement :meth:`match`."""

    name: ClassVar[str]
    markers: ClassVar[tuple[str, ...]] = ()

    def parse(
        self,
        text: str,
        tools: Tools | ToolIndex | None = None,
        *,
        think_open: bool | None = None,
    ) -> ParseResult:
        """Parse a complete model output (see :func:`split_reasoning` for ``think_open``)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        split = split_reasoning(text, think_open, final=True)
        body = split.body_start if split.body_start is not None else len(text)
        segments, _ = self.scan(text, body, ToolIndex.of(tools), final=True, origin=body)
        return ParseResult(
            content="".join(text[s.start : s.end] for s in segments if isinstance(s, Content)),
            calls=[s for s in segments if isinstance(s, ToolCall)],
            errors=[s for s in segments if isinstance(s, ToolCallError)],
            reasoning=text[split.start : split.end],
        )

    def scan(
        self, text: str, pos: int, tools: ToolIndex, *, final: bool, origin: int
    ) -> tuple[list[Segment], int]:
        """Segments of ``text[pos:]`` that are settled, and the position up to which they
        reach (``len(text)`` when ``final``)."""
        ctx = ScanContext(text, tools, final, origin)
        segments: list[Segment] = []
        while pos < len(text):
            found = self.find_candidate(ctx, pos)
            if found is None:
                segments.append(Content(pos, len(text)))
                return segments, len(text)
            if found > pos:
                segments.append(Content(pos, found))
                pos = found
            if pos >= len(text):
                break
            match = self.match(ctx, pos)
            if match is None:  # undecided until more text arrives
                break
            if match.content:
                segments.append(Content(pos, match.end))
            else:
                segments.extend(match.items)
            pos = match.end
        return segments, pos

    def find_candidate(self, ctx: ScanContext, pos: int) -> int | None:
        """First position >= ``pos`` where a call may start, including a partial marker at
        the very end of the text. The default looks for :attr:`markers`."""
        hits = [i for i in (ctx.text.find(m, pos) for m in self.markers) if i != -1]
        partial = partial_marker_start(ctx.text, pos, self.markers)
        if partial is not None:
            hits.append(partial)
        return min(hits, default=None)

    def partial_marker(self, ctx: ScanContext, start: int) -> Match | None:
        """For a candidate that is not a complete marker: wait while it may still become one,
        else it is a plain character."""
        tail = ctx.text[start:]
        if not ctx.final and any(m.startswith(tail) for m in self.markers):
            return None
        return ctx.not_a_call(start)

    @abstractmethod
    def call_prefix(self, name: str) -> str:
        """The text that opens a call to ``name`` in this format (used to force a call)."""

    @abstractmethod
    def match(self, ctx: ScanContext, start: int) -> Match | None:
        """Decide what the candidate at ``start`` is; None while more text is needed (never
        when ``ctx.final``)."""


class TaggedBlockParser(ToolParser):
    """A format whose calls sit in one ``open_tag ... close_tag`` block; a missing close tag
    at the very end of the output is tolerated (the block runs to the end). Subclasses set
    the tags, ``call_opening`` (what opens a call to ``{name}`` after ``open_tag`` and a
    newline), ``no_calls`` (the error for a block holding none) and :meth:`block_items`."""

    open_tag: ClassVar[str]
    close_tag: ClassVar[str]
    call_opening: ClassVar[str]
    no_calls: ClassVar[str]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.markers = (cls.open_tag,)

    def call_prefix(self, name: str) -> str:
        return f"{self.open_tag}\n" + self.call_opening.format(name=name)

    def match(self, ctx: ScanContext, start: int) -> Match | None:
        text = ctx.text
        if not text.startswith(self.open_tag, start):
            return self.partial_marker(ctx, start)
        close = text.find(self.close_tag, start + len(self.open_tag))
        if close == -1 and not ctx.final:
            return None
        inner_end = len(text) if close == -1 else close
        end = len(text) if close == -1 else close + len(self.close_tag)
        items = self.block_items(ctx, start, inner_end, end)
        if not items:
            items = [ToolCallError(self.no_calls, text[start:end], start, end)]
        return Match(end, tuple(items))

    @abstractmethod
    def block_items(
        self, ctx: ScanContext, start: int, inner_end: int, end: int
    ) -> list[ToolCall | ToolCallError]:
        """The calls and errors of the block ``text[start:end]``, whose body ends at
        ``inner_end`` (none: the block is the error ``no_calls``)."""


def skip_space(text: str, i: int, chars: str = " \t\r\n") -> int:
    """First index >= ``i`` whose character is not in ``chars``."""
    while i < len(text) and text[i] in chars:
        i += 1
    return i
