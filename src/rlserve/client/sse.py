"""Server-sent events as OpenAI-compatible servers stream them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from rlserve._checks import is_int
from rlserve.client.errors import APIStatusError

DONE = object()


def parse_sse_line(line: str) -> Any:
    """One SSE line -> a decoded chunk dict, `DONE` for `data: [DONE]`, or None to skip.

    An in-stream error object (`data: {"error": {...}}`, as vLLM sends when a request
    fails after the 200 header went out) raises `APIStatusError`.
    """
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if not data:
        return None
    if data == "[DONE]":
        return DONE
    chunk = json.loads(data)
    if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
        code = chunk["error"].get("code")
        raise APIStatusError(code if is_int(code) else 500, chunk)
    return chunk


def sse_chunks(lines: Iterable[str]) -> Iterator[Any]:
    """The chunks of a stream's lines, up to `data: [DONE]` (the async transport repeats
    this loop: an async generator cannot delegate to a sync one)."""
    for line in lines:
        if (chunk := parse_sse_line(line)) is DONE:
            return
        if chunk is not None:
            yield chunk
