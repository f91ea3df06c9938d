"""A function to run on the engine thread, and the asyncio future awaiting its result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class EngineCall:
    """`fn(engine)` queued for the engine thread; `future` lives on the caller's loop.

    `drain`: run only once no request is running (the engine is paused "wait" meanwhile).
    `check`: run first, before anything is paused or aborted for `fn`; if it raises, the
    call fails with its error and nothing else happens.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        loop: asyncio.AbstractEventLoop,
        drain: bool = False,
        check: Callable[[Any], Any] | None = None,
    ) -> None:
        self.fn = fn
        self.drain = drain
        self.check = check
        self.future: asyncio.Future[Any] = loop.create_future()
        self._loop = loop

    def run(self, engine: Any) -> None:
        """Engine thread: call `fn` and hand its result or exception to the caller."""
        try:
            result = self.fn(engine)
        except Exception as exc:
            self._settle(None, exc)
        else:
            self._settle(result, None)

    def passes_check(self, engine: Any) -> bool:
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
