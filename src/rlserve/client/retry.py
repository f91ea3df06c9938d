"""When and how long to wait before retrying a request."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for connection errors, 429 and 5xx.

    Attempt `k` (0-based) waits a random time in `[d/2, d]` where
    `d = min(max_delay, initial_delay * 2**k)`; a `Retry-After` header from the
    server raises that wait (still capped at `max_delay`).
    """

    max_retries: int = 10
    initial_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ValueError(f"max_retries must be an integer, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.initial_delay < 0:
            raise ValueError(f"initial_delay must be >= 0, got {self.initial_delay}")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= initial_delay ({self.initial_delay})"
            )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number `attempt + 1`."""
        ceiling = min(self.max_delay, self.initial_delay * (2**attempt))
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay))
        return wait


def is_retryable_status(status_code: int) -> bool:
    """429, 408 and 5xx are worth another try; any other 4xx is the caller's fault."""
    return status_code in RETRYABLE_STATUS or status_code >= 500


def is_retryable_exception(exc: BaseException) -> bool:
    """Connection-level failures (refused, reset, timed out) are retried."""
    return isinstance(exc, httpx.TransportError)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds, when it is a number."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    *,
    response: httpx.Response | None = None,
    error: BaseException | None = None,
) -> float | None:
    """Seconds to wait before trying again, or None when the failure is final."""
    if attempt >= policy.max_retries:
        return None
    if error is not None:
        return policy.delay(attempt) if is_retryable_exception(error) else None
    if response is not None and is_retryable_status(response.status_code):
        return policy.delay(attempt, retry_after_seconds(response))
    return None
