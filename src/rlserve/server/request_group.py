"""The engine requests of one HTTP request, and the channel their deltas come back on.

An HTTP request with several prompts becomes several engine requests (one per prompt,
each with `n` samples). The engine thread adds them together and pushes every delta
into one asyncio queue owned by the handler's event loop; the handler only awaits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from rlserve.outputs import RequestOutput
from rlserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from rlserve.engine.call_args import Prompt


class RequestGroup:
    """Prompts sharing one `SamplingParams`, submitted and aborted as a unit.

    Engine-thread side: `resolve`, `deliver`, `fail` (all thread-safe).
    Event-loop side: `await accepted()`, `async for prompt_index, delta in group`, `abort()`.
    """

    def __init__(
        self,
        prompts: list[Prompt],
        params: SamplingParams,
        loop: asyncio.AbstractEventLoop,
        on_abort: Callable[[RequestGroup], None],
        lora_name: str | None = None,
    ) -> None:
        tag = uuid.uuid4().hex
        self.prompts = prompts
        self.params = params
        self.lora_name = lora_name
        self.request_id: str | None = None  # the caller's id, for admin aborts
        self.engine_ids = [f"{tag}-{i}" for i in range(len(prompts))]
        self.max_batch_size = 0  # most sequences sharing a step with this group
        self._loop = loop
        self._on_abort = on_abort
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._accepted: asyncio.Future[None] = loop.create_future()
        self._unfinished = set(range(len(prompts)))
        # Sees every delta as it reaches the handler's loop (the metrics' latency timer).
        self.observer: Callable[[int, RequestOutput], None] | None = None

    @property
    def finished(self) -> bool:
        return not self._unfinished

    @property
    def num_sequences(self) -> int:
        return len(self.prompts) * self.params.n

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop of the handler that owns this group."""
        return self._loop

    # ---- engine-thread side ---------------------------------------------------------------

    def resolve(self, error: BaseException | None) -> None:
        """Report whether the engine took every prompt (error: it took none)."""
        self._call(self._set_accepted, error)

    def put(self, index: int, delta: RequestOutput) -> None:
        """Event-loop side of a delivery (see `deliver_all`)."""
        self._queue.put_nowait((index, delta))
        if self.observer is not None:
            self.observer(index, delta)

    def fail(self, error: BaseException) -> None:
        """End the group with `error` (engine failure or shutdown)."""
        self._call(self._set_accepted, error)
        self._call(self._queue.put_nowait, error)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the handler's event loop is gone: nobody is waiting any more

    def _set_accepted(self, error: BaseException | None) -> None:
        if self._accepted.done():
            return
        if error is None:
            self._accepted.set_result(None)
        else:
            self._accepted.set_exception(error)
            self._accepted.exception()  # mark retrieved: a gone handler must not log it

    # ---- event-loop side ------------------------------------------------------------------

    async def accepted(self) -> None:
        """Wait until the engine has taken the prompts; re-raises its ValueError."""
        await self._accepted

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        while self._unfinished:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._unfinished.clear()
                raise item
            index, delta = item
            if delta.finished:
                self._unfinished.discard(index)
            yield index, delta

    def abort(self) -> None:
        """Stop whatever is still running; the engine frees its KV blocks at once."""
        if not self._accepted.done():
            self._accepted.cancel()
        if self._unfinished:
            self._unfinished.clear()
            self._on_abort(self)


Delivery = tuple[RequestGroup, int, RequestOutput]


def deliver_all(loop: asyncio.AbstractEventLoop, deliveries: list[Delivery]) -> None:
    """Hand one step's deltas to groups living on `loop`, in one thread-safe call.

    Why one call: every `call_soon_threadsafe` wakes the event loop through a pipe, and a
    step can carry deltas for hundreds of requests.
    """

    def put_all() -> None:
        for group, index, delta in deliveries:
            group.put(index, delta)

    try:
        loop.call_soon_threadsafe(put_all)
    except RuntimeError:
        pass  # the event loop is gone: nobody is waiting any more
