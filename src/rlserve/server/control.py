"""Engine thread: calls between steps, and whose pause is in force.

A call with `drain` (a "wait" weight update) pauses the engine "wait" and runs once no
request is running; then generation resumes, unless an operator paused meanwhile: an
operator's pause lasts until their `resume()`, whatever updates run in between.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from rlserve.pause_mode import PauseMode
from rlserve.server.commands import EngineCall, EngineFn

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

T = TypeVar("T")


class ControlPlane:
    """Runs EngineCalls for the loop; `step` delivers one engine step's deltas."""

    def __init__(self, engine: EngineCore, step: Callable[[], None]) -> None:
        self.engine = engine
        self._step = step
        self._draining: deque[EngineCall[object]] = deque()  # waiting for num_running == 0
        self._paused_for_drain = False  # whether the pause("wait") is ours, not an operator's

    def stalled(self) -> bool:
        """A step would schedule nothing: paused, or draining with nothing left running."""
        paused = self.engine.paused
        if paused in (PauseMode.KEEP, PauseMode.ABORT):
            return True
        return paused == PauseMode.WAIT and not self.engine.num_running

    def start(self, call: EngineCall[object]) -> None:
        """Run `call` now, or queue it for the drain it asks for."""
        engine = self.engine
        if not call.passes_check(engine):
            return  # refused before anything was paused or aborted
        if call.drain and engine.paused is None:
            engine.pause(PauseMode.WAIT)
            self._paused_for_drain = True
            self._draining.append(call)
            return
        if call.drain and engine.paused == PauseMode.WAIT:
            self._draining.append(call)
            return
        call.run(engine)
        self._step_if_aborted()

    def run_drained(self) -> None:
        """Run the calls waiting for a drain once nothing runs, then generate again
        (unless the pause is an operator's)."""
        if not self._draining or self.engine.num_running:
            return
        while self._draining:
            self._draining.popleft().run(self.engine)
        if self._paused_for_drain and self.engine.paused == PauseMode.WAIT:
            self.engine.resume()
        self._paused_for_drain = False

    def operator_pause(self, engine: EngineCore, mode: PauseMode) -> None:
        engine.pause(mode)
        self._paused_for_drain = False  # the operator's now: only resume() ends it

    def operator_resume(self, engine: EngineCore, recompute_kv: bool) -> None:
        engine.resume(recompute_kv=recompute_kv)
        if self._draining:  # a "wait" update is pending: keep draining for it
            engine.pause(PauseMode.WAIT)
        self._paused_for_drain = bool(self._draining)

    def after_abort(self, fn: EngineFn[T]) -> EngineFn[T]:
        """`fn` run once every request is aborted (their partial outputs delivered first);
        a pause in force before goes on afterwards."""

        def run(engine: EngineCore) -> T:
            before = engine.paused
            engine.pause(PauseMode.ABORT)
            self._step()
            try:
                return fn(engine)
            finally:
                if before is None:
                    engine.resume()
                else:
                    engine.pause(before)  # nothing is left to abort; the pause goes on

        return run

    def fail_pending(self, error: BaseException) -> None:
        """Shutdown: fail the calls still waiting for a drain."""
        while self._draining:
            self._draining.popleft().fail(error)

    def _step_if_aborted(self) -> None:
        """Deliver the partial outputs of requests a call aborted (pause("abort"))."""
        if self.engine.paused == PauseMode.ABORT and self.engine.has_unfinished_requests():
            self._step()
