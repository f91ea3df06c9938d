"""Result types shared by every tool-call parser."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_call_id() -> str:
    """A fresh OpenAI-style tool-call id (``call_<hex>``)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    """One parsed tool call; ``start_pos``/``end_pos`` index into the original text."""

    name: str
    arguments: dict[str, Any]
    raw_text: str
    start_pos: int
    end_pos: int
    id: str = field(default_factory=new_call_id, compare=False)

    def to_openai(self) -> dict[str, Any]:
        """The call in the OpenAI chat-completions ``tool_calls`` shape."""
        return {
            "id": self.id,
            "type": "function",
            "function": {
                "name": self.name,
                "arguments": json.dumps(self.arguments, ensure_ascii=False),
            },
        }


@dataclass
class ToolCallError:
    """A tool call that was recognised as one but could not be used."""

    message: str
    raw_text: str
    start_pos: int
    end_pos: int
    name: str | None = None


@dataclass
class ParseResult:
    """Text content (tool-call markup removed), the calls, per-call errors and reasoning.

    ``content`` is the model's text with calls, malformed calls and reasoning cut out, kept
    exactly otherwise (no stripping), so that it equals the concatenated streaming deltas.
    """

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[ToolCallError] = field(default_factory=list)
    reasoning: str = ""
