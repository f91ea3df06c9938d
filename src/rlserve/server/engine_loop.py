"""The one thread that drives the EngineCore; HTTP handlers talk to it through a queue.

The engine is not thread-safe, so only this thread calls it. Handlers `submit()` a
RequestGroup (never blocking the event loop) and get deltas back through the group's
asyncio queue. When the engine goes from idle to busy the thread waits up to
`flush_interval_s` for companions (up to `max_batch` sequences) before the first step;
while busy, new requests join the next step (continuous batching).

`call(fn)` runs `fn(engine)` on this thread between two steps (weight updates, adapters,
pause/resume; see `control.ControlPlane`); the stats are republished before its caller
hears back, so `/health` and `/metrics` show what an admin call changed as soon as it
returns. While the engine is paused nothing is scheduled, so the thread blocks on its
inbox instead of stepping in a tight loop.

`close(grace_s)` begins a graceful shutdown: nothing new is admitted, running requests go
on for `grace_s` seconds and are then aborted (their clients get `finish_reason` "abort"
with their partial output); `stop()` ends the thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rlserve.pause_mode import PauseMode
from rlserve.sampling_params import SamplingParams
from rlserve.server.admission import Admission
from rlserve.server.commands import Abort, Add, Call, Command, EngineCall, EngineFn, Wake
from rlserve.server.engine_thread import EngineThread
from rlserve.server.loop_errors import (
    EngineFailure,
    EngineUnavailable,
    Overloaded,
    TooManySequences,
)
from rlserve.server.request_group import RequestGroup

if TYPE_CHECKING:
    from rlserve.engine.call_args import Prompt
    from rlserve.engine.core import EngineCore
    from rlserve.outputs import RequestOutput

__all__ = [  # the loop's errors are importable from here too
    "EngineFailure",
    "EngineLoop",
    "EngineUnavailable",
    "Overloaded",
    "TooManySequences",
]

T = TypeVar("T")


class EngineLoop:
    """Owns `engine` in a background thread; start() it, then submit() from handlers."""

    def __init__(
        self, engine: EngineCore, *, max_batch: int, flush_interval_s: float, max_queue: int
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._admission = Admission(max_queue)
        self._worker = EngineThread(
            engine,
            self._inbox,
            self._admission,
            max_batch=max_batch,
            flush_interval_s=flush_interval_s,
        )
        self._routes = self._worker.routes
        # Makes each submitted group's delta observer (set by the app: latency metrics).
        self.request_timer: Callable[[], Callable[[int, RequestOutput], None]] | None = None
        self._control = self._worker.control
        self._stopping = self._worker.stopping
        self._closing = threading.Event()  # close(): admit nothing new
        self._thread = threading.Thread(target=self._worker.run, name="rlserve-engine", daemon=True)

    # ---- any thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current step, fail what is left with EngineUnavailable, join."""
        self._stopping.set()
        self._inbox.put(Wake())
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self, grace_s: float) -> None:
        """Graceful shutdown (any thread, a signal handler included): refuse new requests
        (503) from now on, and abort those still running `grace_s` seconds later."""
        if self._closing.is_set():
            return
        self._worker.abort_at = time.monotonic() + max(0.0, grace_s)
        self._closing.set()
        self._inbox.put(Wake())

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def running(self) -> bool:
        """The engine thread runs and takes calls (False once `stop()` began)."""
        return self._thread.is_alive() and not self._stopping.is_set()

    @property
    def alive(self) -> bool:
        """Running and admitting requests (False once `close()` or `stop()` began)."""
        return self.running and not self.closing

    @property
    def idle(self) -> bool:
        """No request queued for the engine or running in it (a snapshot, any thread)."""
        return not self._routes and self.queue_depth == 0

    @property
    def queue_depth(self) -> int:
        """Sequences waiting for a batch slot (not yet handed over, or queued in the engine)."""
        return self._admission.depth

    def stats(self) -> dict[str, Any]:
        """The engine's counters after the latest step, plus queue depth, tokens/s and the
        pause mode in force (`paused`: None or "keep"/"wait"/"abort")."""
        return {**self._worker.published.latest, "queue_depth": self.queue_depth}

    def check_admissible(self, num_sequences: int) -> None:
        """Raise what `submit()` would for `num_sequences` more sequences right now: a
        cheap early refusal, before a handler tokenises (`submit()` checks again)."""
        with self._admission.lock:
            self._refuse_unless_admissible(num_sequences)

    def _refuse_unless_admissible(self, num_sequences: int) -> None:
        self._admission.refuse_unless_admissible(
            num_sequences, closing=self.closing, running=self.running
        )

    # ---- event-loop side ------------------------------------------------------------------

    def submit(
        self,
        prompts: list[Prompt],
        params: SamplingParams,
        lora_name: str | None = None,
        request_id: str | None = None,
    ) -> RequestGroup:
        """Queue prompts for the engine (on LoRA adapter `lora_name`, if given); await
        `group.accepted()` to learn whether it took them. `request_id` lets `abort_requests`
        find the group."""
        loop = asyncio.get_running_loop()
        group = RequestGroup(prompts, params, loop, self._request_abort, lora_name)
        group.request_id = request_id
        if self.request_timer is not None:
            group.observer = self.request_timer()
        with self._admission.lock:  # shutdown drains the inbox under it: nothing slips past
            self._refuse_unless_admissible(group.num_sequences)
            self._admission.queued += group.num_sequences
            self._inbox.put(Add(group))
        return group

    def _request_abort(self, group: RequestGroup) -> None:
        self._inbox.put(Abort(group))

    async def call(
        self, fn: EngineFn[T], drain: bool = False, check: EngineFn[object] | None = None
    ) -> T:
        """Run `fn(engine)` on the engine thread between two steps; its result or exception
        comes back here. `drain`: first pause("wait") until no request runs, then resume.
        `check(engine)` runs before that pause; if it raises, nothing else happens."""
        call = EngineCall(self._then_publish(fn), asyncio.get_running_loop(), drain, check)
        with self._admission.lock:
            if not self.running:
                raise EngineUnavailable("the engine is not running (starting or stopping)")
            self._inbox.put(Call(call))
        return await call.future

    def _then_publish(self, fn: EngineFn[T]) -> EngineFn[T]:
        """`fn`, then fresh stats before its caller hears back (read-your-writes)."""

        def run(engine: EngineCore) -> T:
            try:
                return fn(engine)
            finally:
                self._worker.publish_stats()

        return run

    async def update(
        self,
        fn: EngineFn[T],
        mode: PauseMode | str = PauseMode.KEEP,
        check: EngineFn[object] | None = None,
    ) -> T:
        """Run the weight update `fn(engine)` in pause `mode`: "keep" between two steps,
        "wait" once running requests finished (they keep streaming meanwhile), "abort"
        after aborting every request (their partial outputs are delivered first).
        `check(engine)` runs before anything is paused or aborted: when it raises, running
        requests are untouched. An operator's earlier pause outlives the update."""
        match PauseMode.parse(mode):
            case PauseMode.KEEP:
                return await self.call(fn, check=check)
            case PauseMode.WAIT:
                return await self.call(fn, drain=True, check=check)
            case PauseMode.ABORT:
                return await self.call(self._control.after_abort(fn), check=check)

    async def pause(self, mode: PauseMode | str) -> None:
        """An operator's pause: it stays until `resume()`, whatever updates run meanwhile."""
        mode = PauseMode.parse(mode)
        await self.call(lambda engine: self._control.operator_pause(engine, mode))

    async def resume(self, recompute_kv: bool = False) -> None:
        """End an operator's pause (a pending "wait" update keeps draining first)."""
        await self.call(lambda engine: self._control.operator_resume(engine, recompute_kv))

    async def abort_requests(self, request_id: str | None = None) -> int:
        """Abort the routed requests matching `request_id` (None: all); their responses end
        with finish_reason "abort". Returns how many engine requests were aborted."""
        return await self.call(lambda _: self._worker.abort_matching(request_id))
