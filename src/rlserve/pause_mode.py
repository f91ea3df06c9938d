"""How generation pauses for a weight update; torch-free, shared by engine, server and client."""

from __future__ import annotations

from enum import Enum

from rlserve._checks import ParamError


class PauseMode(str, Enum):
    """KEEP freezes running requests with their KV; WAIT admits nothing new but lets running
    requests finish; ABORT aborts every request (partial outputs are returned)."""

    KEEP = "keep"
    WAIT = "wait"
    ABORT = "abort"

    def __str__(self) -> str:  # "keep", as in messages and JSON, not "PauseMode.KEEP"
        return self.value

    @classmethod
    def parse(cls, value: object, field: str = "mode") -> PauseMode:
        """The mode named by `value` (a PauseMode or its string); ParamError otherwise."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ParamError(field, f"{field} must be one of {choices}, got {value!r}") from None
