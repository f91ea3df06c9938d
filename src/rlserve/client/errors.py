"""Exceptions raised by the rlserve clients."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """Base class for every error the clients raise."""


class APIConnectionError(APIError):
    """The server could not be reached (after all retries), or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The call's timeout ran out (it bounds the whole call, retries included)."""


class APIStatusError(APIError):
    """The server answered with a 4xx/5xx status.

    `message`, `type`, `param` and `code` come from OpenAI's error JSON
    (`{"error": {...}}`) when the server sent one; `body` is the decoded body.
    """

    def __init__(self, status_code: int, body: Any) -> None:
        self.status_code = status_code
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            self.message = str(error.get("message", ""))
            self.type = error.get("type")
            self.param = error.get("param")
            self.code = error.get("code")
        else:
            detail = body.get("detail") if isinstance(body, dict) else None
            self.message = str(detail if detail is not None else body)
            self.type = self.param = self.code = None
        super().__init__(f"HTTP {status_code}: {self.message}")
