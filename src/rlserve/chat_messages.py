"""How a chat request becomes chat-template input, written once for the server and the
client: the client's fallback prompt tokens must match what the server renders.

Imports nothing heavy (no torch, no transformers), so `rlserve.client` may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def join_text_parts(content: list[Any], position: int) -> str:
    """OpenAI text content parts (`[{"type": "text", "text": ...}, ...]`) joined into one
    string, as chat templates expect; ValueError naming `messages[position]` otherwise."""
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise ValueError(f"messages[{position}]: only text content parts are supported")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"messages[{position}]: a text content part needs a string 'text'")
        texts.append(part["text"])
    return "".join(texts)


def with_joined_text(message: dict[str, Any], position: int) -> dict[str, Any]:
    """`message` with list content joined into one string (other content unchanged)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": join_text_parts(content, position)}


def chat_template_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `tokenizer.apply_chat_template` from a chat request's fields
    (vLLM's names): `tools`, `chat_template`, `chat_template_kwargs`,
    `continue_final_message`, and `add_generation_prompt` (default True, off when the
    final message is continued). `tokenize` is left to the caller."""
    options = dict(body.get("chat_template_kwargs") or {})
    if body.get("chat_template") is not None:
        options["chat_template"] = body["chat_template"]
    continue_final = bool(body.get("continue_final_message"))
    if continue_final:
        options["continue_final_message"] = True
    options["tools"] = body.get("tools")
    options["add_generation_prompt"] = (
        bool(body.get("add_generation_prompt", True)) and not continue_final
    )
    return options
