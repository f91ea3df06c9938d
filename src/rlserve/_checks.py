"""Input checks shared by every config and entry point; torch-free, imported by all layers.

`bool` is an `int` in Python, but `n=True` or `max_tokens=False` is always a caller's
mistake: every integer check here refuses it.
"""

from __future__ import annotations

import math


class ParamError(ValueError):
    """A bad value for one named field; `field` says which (HTTP layers report it as `param`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def is_int(value: object) -> bool:
    """A real integer: `int`, never `bool`."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or float that is not NaN (and not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def is_token_ids(value: object) -> bool:
    """A list or tuple of real integers (empty allowed; the caller decides)."""
    return isinstance(value, (list, tuple)) and all(is_int(t) for t in value)


def check_int(
    field: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """`value` if it is an integer within [minimum, maximum]; ParamError otherwise."""
    if not is_int(value):
        raise ParamError(field, f"{field} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise ParamError(field, f"{field} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:  # type: ignore[operator]
        raise ParamError(field, f"{field} must be <= {maximum}, got {value}")
    return value  # type: ignore[return-value]


def check_positive_int(field: str, value: object) -> int:
    if not is_int(value) or value < 1:  # type: ignore[operator]
        raise ParamError(field, f"{field} must be a positive integer, got {value!r}")
    return value  # type: ignore[return-value]


def check_number(
    field: str, value: object, *, finite: bool = False, positive: bool = False
) -> float:
    """`value` if it is a number (not NaN; finite and > 0 when asked); ParamError otherwise."""
    if not is_number(value):
        raise ParamError(field, f"{field} must be a number, got {value!r}")
    if finite and not math.isfinite(value):  # type: ignore[arg-type]
        raise ParamError(field, f"{field} must be finite, got {value!r}")
    if positive and not value > 0:  # type: ignore[operator]
        raise ParamError(field, f"{field} must be > 0, got {value!r}")
    return value  # type: ignore[return-value]


def check_bool(field: str, value: object) -> bool:
    """`value` if it is a bool (not 0/1 or "true"); ParamError otherwise."""
    if not isinstance(value, bool):
        raise ParamError(field, f"{field} must be a bool, got {value!r}")
    return value
