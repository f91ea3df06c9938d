"""When and how long to wait before retrying a request."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from rlserve._checks import ParamError, check_int, check_number, is_number
from rlserve.client.errors import APIConnectionError, APIStatusError, APITimeoutError
from rlserve.client.payloads import NOT_GIVEN, PreparedCall, decode_body, request_options

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
        check_int("max_retries", self.max_retries, minimum=0)
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


class Deadline:
    """The total time one call may take: every attempt, backoff wait and retry included.

    Built from the call's timeout (a number of seconds, an `httpx.Timeout`, or None for no
    limit). Each attempt's connect/read/write waits are capped by what is left, and a retry
    whose backoff would not end before the deadline is not made.
    """

    def __init__(self, timeout: float | httpx.Timeout | None) -> None:
        self.timeout = timeout
        total = total_seconds(timeout)
        self.seconds = total
        self._end = None if total is None else time.monotonic() + total

    def remaining(self) -> float | None:
        """Seconds left (<= 0 once passed), or None without a limit."""
        return None if self._end is None else self._end - time.monotonic()

    def allows_wait(self, seconds: float) -> bool:
        """Whether waiting `seconds` still leaves time for another attempt."""
        left = self.remaining()
        return left is None or seconds < left

    def attempt_timeout(self) -> float | httpx.Timeout | None:
        """The httpx timeout for the next attempt; APITimeoutError when none is left."""
        left = self.remaining()
        if left is None:
            return self.timeout
        if left <= 0:
            raise APITimeoutError(f"the call's {self.seconds:g} s timeout ran out")
        if isinstance(self.timeout, httpx.Timeout):
            return httpx.Timeout(
                connect=min(self.timeout.connect, left),  # type: ignore[type-var]
                read=min(self.timeout.read, left),  # type: ignore[type-var]
                write=min(self.timeout.write, left),  # type: ignore[type-var]
                pool=min(self.timeout.pool, left),  # type: ignore[type-var]
            )
        return left


def total_seconds(timeout: Any) -> float | None:
    """A call's total budget: the number itself, or for an `httpx.Timeout` its longest
    wait (None when any of its waits is unbounded)."""
    if timeout is None:
        return None
    if isinstance(timeout, httpx.Timeout):
        waits = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        return None if any(w is None for w in waits) else max(waits)  # type: ignore[type-var]
    if not is_number(timeout):
        raise ParamError(
            "timeout",
            f"timeout must be a number of seconds, an httpx.Timeout or None, got {timeout!r}",
        )
    return float(check_number("timeout", timeout, positive=True))


def wait_or_raise(
    policy: RetryPolicy,
    deadline: Deadline,
    attempt: int,
    method: str,
    path: str,
    failure: httpx.Response | httpx.TransportError,
) -> float:
    """Seconds to wait before retrying attempt `attempt` of `method path`, which failed
    with `failure` (an error status or a transport error); when the failure is final or
    the retry could not start before the deadline, raises the call's error instead."""
    if isinstance(failure, httpx.Response):
        delay = retry_delay(policy, attempt, response=failure)
    else:
        delay = retry_delay(policy, attempt, error=failure)
    if delay is not None and deadline.allows_wait(delay):
        return delay
    raise call_error(method, path, failure) from _cause(failure)


def call_error(
    method: str, path: str, failure: httpx.Response | httpx.TransportError
) -> APIConnectionError | APIStatusError:
    """The error a call that ends with `failure` raises."""
    if isinstance(failure, httpx.Response):
        return APIStatusError(failure.status_code, decode_body(failure))
    return transport_error(method, path, failure)


def _cause(failure: httpx.Response | httpx.TransportError) -> BaseException | None:
    return failure if isinstance(failure, BaseException) else None


def transport_error(method: str, path: str, exc: httpx.TransportError) -> APIConnectionError:
    """The client error for a failed attempt: APITimeoutError for timeouts."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{method} {path}: timed out ({exc!r})")
    return APIConnectionError(f"{method} {path}: {exc!r}")


class Attempts:
    """The retry state of one call: each attempt's request options and, after a failure,
    how long to wait before the next attempt (or the call's error, when it is final)."""

    def __init__(self, call: PreparedCall, policy: RetryPolicy, timeout: Any) -> None:
        self.call = call
        self.attempt = 0
        # An admin call is sent once, under the client's per-read timeouts: a weight
        # upload may stream for minutes, and replaying it would apply it twice.
        self.policy = RetryPolicy(max_retries=0) if call.admin else policy
        budget = timeout if call.timeout is NOT_GIVEN else call.timeout
        self.deadline = Deadline(None if call.admin else budget)
        self._last_failure: httpx.Response | httpx.TransportError | None = None

    def request_options(self) -> dict[str, Any]:
        """`build_request` keyword arguments of the next attempt."""
        if self.call.admin:
            return request_options(self.call, httpx.USE_CLIENT_DEFAULT)
        try:
            timeout = self.deadline.attempt_timeout()
        except APITimeoutError:
            # The wait before this retry overran the deadline (a late wake-up): the call
            # ends with the error of its last attempt, as if that one had been final.
            if self._last_failure is None:
                raise
            failure = self._last_failure
            raise call_error(self.call.method, self.call.path, failure) from _cause(failure)
        return request_options(self.call, timeout)

    def wait_after(self, failure: httpx.Response | httpx.TransportError) -> float:
        """Seconds to wait after the last attempt failed with `failure`; raises the call's
        error when there is no retry left (see `wait_or_raise`)."""
        method, path = self.call.method, self.call.path
        delay = wait_or_raise(self.policy, self.deadline, self.attempt, method, path, failure)
        self._last_failure = failure
        self.attempt += 1
        return delay
