"""Incremental tool-call parsing over a stream of text deltas."""

from __future__ import annotations

from dataclasses import dataclass

from rlserve.tools.parsers import get_parser
from rlserve.tools.parsers.base import Content, Segment
from rlserve.tools.parsers.reasoning import split_reasoning
from rlserve.tools.parsers.schema import ToolIndex, Tools
from rlserve.tools.parsers.types import ToolCall, ToolCallError

EVENT_KINDS = ("content", "reasoning", "tool_call", "error")


@dataclass
class StreamEvent:
    """One streaming event: a ``content`` or ``reasoning`` text delta, a complete
    ``tool_call`` (with its 0-based ``index`` among the calls), or a malformed-call
    ``error``."""

    kind: str
    text: str = ""
    call: ToolCall | None = None
    error: ToolCallError | None = None
    index: int | None = None


class StreamingToolParser:
    """Feed text deltas, get events; the concatenated content deltas, the calls and the
    errors equal :meth:`ToolParser.parse` of the whole text, however it was chunked.

    Text that could still turn out to be the start of a tool call (a trailing ``<tool_c``, an
    unclosed call) is held back until it is decided. A call is emitted once it is complete,
    at the latest when its closing tag or bracket arrives. With ``think_open=None`` (auto)
    content is held until ``</think>`` appears or the stream ends; pass ``think_open=False``
    (or True) when the chat template tells whether a reasoning block was opened.
    """

    def __init__(
        self,
        parser_name: str,
        tools: Tools | ToolIndex | None = None,
        *,
        think_open: bool | None = None,
    ) -> None:
        self._parser = get_parser(parser_name)
        self._tools = ToolIndex.of(tools)
        self._think_open = think_open
        self._text = ""
        self._reasoning_sent: int | None = None
        self._origin: int | None = None  # body start, once known
        self._pos = 0  # body text before this is settled and emitted
        self._calls = 0
        self._finished = False

    @property
    def text(self) -> str:
        """All text fed so far."""
        return self._text

    def feed(self, delta_text: str) -> list[StreamEvent]:
        """Add a delta; returns the events it settles."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not isinstance(delta_text, str):
            raise ValueError(f"delta_text must be a string, got {type(delta_text).__name__}")
        self._text += delta_text
        return self._advance(final=False)

    def finish(self) -> list[StreamEvent]:
        """End of stream: settle and return everything still held back."""
        if self._finished:
            return []
        events = self._advance(final=True)
        self._finished = True
        return events

    def _advance(self, final: bool) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._origin is None:
            split = split_reasoning(self._text, self._think_open, final)
            begin = max(split.start, self._reasoning_sent or 0)
            if split.end > begin:
                events.append(StreamEvent("reasoning", self._text[begin : split.end]))
                self._reasoning_sent = split.end
            if split.body_start is None:
                return events
            self._origin = self._pos = split.body_start
        segments, self._pos = self._parser.scan(
            self._text, self._pos, self._tools, final=final, origin=self._origin
        )
        events.extend(self._events(segments))
        return events

    def _events(self, segments: list[Segment]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for seg in segments:
            if isinstance(seg, Content):
                if seg.end <= seg.start:
                    continue
                piece = self._text[seg.start : seg.end]
                if events and events[-1].kind == "content":
                    events[-1].text += piece
                else:
                    events.append(StreamEvent("content", piece))
            elif isinstance(seg, ToolCall):
                events.append(StreamEvent("tool_call", call=seg, index=self._calls))
                self._calls += 1
            else:
                events.append(StreamEvent("error", error=seg))
        return events
