"""What handlers put in the engine thread's inbox: typed commands, read with `match`.

`Add(group)` hands a RequestGroup to the engine, `Abort(group)` withdraws it, `Call(call)`
runs a function on the engine thread between two steps, `Wake()` only ends a blocking wait
(stop or close). An `EngineCall` carries its result back to the caller's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rlserve.server.request_group import RequestGroup

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

log = logging.getLogger(__name__)

T = TypeVar("T")
EngineFn = Callable[["EngineCore"], T]


class EngineCall(Generic[T]):
    """`fn(engine)` queued for the engine thread; `future` lives on the caller's loop.

    `drain`: run only once no request is running (the engine is paused "wait" meanwhile).
    `check`: run first, before anything is paused or aborted for `fn`; if it raises, the
    call fails with its error and nothing else happens.
    """

    def __init__(
        self,
        fn: EngineFn[T],
        loop: asyncio.AbstractEventLoop,
        drain: bool = False,
        check: EngineFn[object] | None = None,
    ) -> None:
        self.fn = fn
        self.drain = drain
        self.check = check
        self.future: asyncio.Future[T] = loop.create_future()
        self._loop = loop

    def run(self, engine: EngineCore) -> None:
        """Engine thread: call `fn` and hand its result or exception to the caller."""
        try:
            result = self.fn(engine)
        except Exception as exc:
            self._settle(None, exc)
        else:
            self._settle(result, None)

    def passes_check(self, engine: EngineCore) -> bool:
        """Engine thread: run `check`; on its error settle the call with it, return False."""
        if self.check is None:
            return True
        try:
            self.check(engine)
        except Exception as exc:
            self._settle(None, exc)
            return False
        return True

    def fail(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, result: Any, error: BaseException | None) -> None:
        def settle() -> None:
            if self.future.done():
                return  # the caller went away
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:
            log.warning("engine call finished after its event loop closed")


@dataclass(frozen=True)
class Add:
    """Hand `group`'s prompts to the engine."""

    group: RequestGroup


@dataclass(frozen=True)
class Abort:
    """Withdraw what is left of `group` (its handler went away or gave up)."""

    group: RequestGroup


@dataclass(frozen=True)
class Call:
    """Run `call` on the engine thread between two steps."""

    call: EngineCall[Any]


@dataclass(frozen=True)
class Wake:
    """Nothing to do: ends a blocking wait so the thread sees stop() or close()."""


Command = Add | Abort | Call | Wake
