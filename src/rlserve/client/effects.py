"""The sans-IO core's vocabulary: what a call asks its transport to do.

Every client call is written once, as a generator (a `Flow`) that yields effects and
receives their results; the blocking `Client` and the `AsyncClient` only perform the
effects (`time.sleep` vs `asyncio.sleep`, `httpx.Client` vs `httpx.AsyncClient`). An
effect that fails is thrown back into the flow at its `yield`, so the flow's own
`try`/`with` blocks see the error (a retry, or a weight sync that must end).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from rlserve.client.weight_sync import WeightSyncController

T = TypeVar("T")
Flow = Generator[Any, Any, T]


@dataclass
class Transmit:
    """Send one attempt (`build_request` keyword arguments) and return the response; an
    error status comes back with its body read and the connection released, a transport
    error is raised into the flow."""

    options: dict[str, Any]
    stream: bool = False


@dataclass
class Sleep:
    """Wait `seconds` before the next attempt."""

    seconds: float


@dataclass
class AwaitWeightSync:
    """Wait while `controller` syncs the weights of `model_tag`."""

    controller: WeightSyncController
    model_tag: str


@dataclass
class Offload:
    """Run `fn(*args)`: in a worker thread on the async client (tokenising takes
    milliseconds, which hundreds of concurrent rollouts should not queue behind)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass
class Locked:
    """Run the nested `flow` under the client's lock (one lookup of the default model)."""

    flow: Flow[Any]


@dataclass
class Chunks:
    """An iterator (async on the async client) of the SSE chunks of an open stream."""

    response: httpx.Response


@dataclass
class Done:
    """A finished flow and its result."""

    value: Any = None


@dataclass
class Outcome:
    """What performing an effect gave: a value, or the error it raised (trio's `outcome`)."""

    value: Any = None
    error: BaseException | None = None

    def send(self, flow: Flow[Any]) -> Any:
        """Resume `flow` with this outcome (its error is thrown in at the `yield`): the next
        effect, or `Done` with the flow's result. An error the flow does not handle raises."""
        try:
            return flow.send(self.value) if self.error is None else flow.throw(self.error)
        except StopIteration as stop:
            return Done(stop.value)


def capture(perform: Callable[[Any], Any], effect: Any) -> Outcome:
    """`perform(effect)` as an `Outcome`."""
    try:
        return Outcome(perform(effect))
    except BaseException as exc:  # cancellation too: the flow's `with` blocks must exit
        return Outcome(error=exc)


async def acapture(perform: Callable[[Any], Awaitable[Any]], effect: Any) -> Outcome:
    """`await perform(effect)` as an `Outcome`."""
    try:
        return Outcome(await perform(effect))
    except BaseException as exc:
        return Outcome(error=exc)
