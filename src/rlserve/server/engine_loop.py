"""The one thread that drives the Engine; HTTP handlers talk to it through a queue.

The Engine is not thread-safe, so only this thread calls it. Handlers `submit()` a
RequestGroup (never blocking the event loop) and get deltas back through the group's
asyncio queue. When the engine goes from idle to busy the thread waits up to
`flush_interval_s` for companions (up to `max_batch` sequences) before the first step;
while busy, new requests join the next step (continuous batching).

`call(fn)` runs `fn(engine)` on this thread between two steps (weight updates, adapters,
pause/resume). While the engine is paused nothing is scheduled, so the thread blocks on
its inbox instead of stepping in a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rlserve.sampling_params import SamplingParams
from rlserve.server.engine_calls import EngineCall
from rlserve.server.request_group import Delivery, Prompt, RequestGroup, deliver_all

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.25
_RATE_WINDOW_S = 5.0


class Overloaded(Exception):
    """The waiting queue is full; the request was not taken (HTTP 429)."""


class EngineUnavailable(Exception):
    """The engine thread is not running (startup failed, crashed or shutting down)."""


class EngineFailure(Exception):
    """`Engine.step()` raised; the requests it was running were aborted."""


class EngineLoop:
    """Owns `engine` in a background thread; start() it, then submit() from handlers."""

    def __init__(
        self, engine: Any, *, max_batch: int, flush_interval_s: float, max_queue: int
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._draining: deque[EngineCall] = deque()  # calls waiting for num_running == 0
        self._routes: dict[str, tuple[RequestGroup, int]] = {}
        self._lock = threading.Lock()
        self._queued_sequences = 0  # submitted, not yet handed to the engine
        self._stats: dict[str, Any] = {**engine.stats(), "tokens_per_second": 0.0}
        self._token_samples: deque[tuple[float, int]] = deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlserve-engine", daemon=True)

    # ---- any thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current step, fail what is left with EngineUnavailable, join."""
        self._stopping.set()
        self._inbox.put(("wake", None))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    @property
    def queue_depth(self) -> int:
        """Sequences waiting for a batch slot (not yet handed over, or queued in the engine)."""
        return self._queued_sequences + int(self._stats.get("num_waiting", 0))

    def stats(self) -> dict[str, Any]:
        """The engine's counters after the latest step, plus queue depth and tokens/s."""
        return {**self._stats, "queue_depth": self.queue_depth}

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
        with self._lock:  # shutdown drains the inbox under this lock: nothing slips past it
            if not self.alive:
                raise EngineUnavailable("the engine is not running (starting or stopping)")
            if self.queue_depth + group.num_sequences > self.max_queue and self.queue_depth:
                raise Overloaded(
                    f"server overloaded: {self.queue_depth} sequences are already waiting "
                    f"(limit --max-queue {self.max_queue}); retry later"
                )
            self._queued_sequences += group.num_sequences
            self._inbox.put(("add", group))
        return group

    def _request_abort(self, group: RequestGroup) -> None:
        self._inbox.put(("abort", group))

    async def call(self, fn: Callable[[Any], Any], drain: bool = False) -> Any:
        """Run `fn(engine)` on the engine thread between two steps; its result or exception
        comes back here. `drain`: first pause("wait") until no request runs, then resume."""
        call = EngineCall(fn, asyncio.get_running_loop(), drain)
        with self._lock:
            if not self.alive:
                raise EngineUnavailable("the engine is not running (starting or stopping)")
            self._inbox.put(("call", call))
        return await call.future

    async def update(self, fn: Callable[[Any], Any], mode: str = "keep") -> Any:
        """Run the weight update `fn(engine)` in pause `mode`: "keep" between two steps,
        "wait" once running requests finished (they keep streaming meanwhile), "abort"
        after aborting every request (their partial outputs are delivered first)."""
        if mode == "keep":
            return await self.call(fn)
        if mode == "wait":
            return await self.call(fn, drain=True)
        if mode == "abort":
            return await self.call(self._after_abort(fn))
        raise ValueError(f"mode must be one of 'keep', 'wait', 'abort', got {mode!r}")

    def _after_abort(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(engine: Any) -> Any:
            before = engine.paused
            engine.pause("abort")
            self._step()
            try:
                return fn(engine)
            finally:
                if before is None:
                    engine.resume()

        return run

    async def abort_requests(self, request_id: str | None = None) -> int:
        """Abort the routed requests matching `request_id` (None: all); their responses end
        with finish_reason "abort". Returns how many engine requests were aborted."""
        return await self.call(lambda engine: self._abort_matching(engine, request_id))

    # ---- engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._run_drained_calls()
                if not self.engine.has_unfinished_requests():
                    self._wait_for_work()
                    continue
                if self._stalled():
                    self._wait_for_command()
                self._drain_inbox()
                self._step()
        except BaseException:
            log.exception("engine loop crashed")
            raise
        finally:
            self._shutdown()

    def _wait_for_work(self) -> None:
        """Block while idle; after the first request, linger for companions."""
        try:
            command = self._inbox.get(timeout=_IDLE_POLL_S)
        except queue.Empty:
            self._publish_stats()
            return
        added = self._handle(command)
        deadline = time.monotonic() + self.flush_interval_s
        while added < self.max_batch and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                command = self._inbox.get(timeout=remaining)
            except queue.Empty:
                break
            added += self._handle(command)

    def _stalled(self) -> bool:
        """A step would schedule nothing: paused, or draining with nothing left running."""
        paused = getattr(self.engine, "paused", None)  # engines without a control plane
        return paused in ("keep", "abort") or (paused == "wait" and not self.engine.num_running)

    def _wait_for_command(self) -> None:
        try:
            command = self._inbox.get(timeout=_IDLE_POLL_S)
        except queue.Empty:
            self._publish_stats()
            return
        self._handle(command)

    def _drain_inbox(self) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(command)

    def _handle(self, command: tuple[str, Any]) -> int:
        """Apply one command; returns how many sequences it added."""
        kind, group = command
        if group is None:
            return 0
        if kind == "call":
            self._start_call(group)
            return 0
        if kind == "abort":
            for engine_id in group.engine_ids:
                if self._routes.pop(engine_id, None) is not None:
                    self.engine.abort(engine_id)
            return 0
        with self._lock:
            self._queued_sequences -= group.num_sequences
        return self._add(group)

    def _start_call(self, call: EngineCall) -> None:
        if call.drain and self.engine.paused is None:
            self.engine.pause("wait")
            self._draining.append(call)
            return
        if call.drain and self.engine.paused == "wait":
            self._draining.append(call)
            return
        call.run(self.engine)
        self._step_if_aborted()

    def _run_drained_calls(self) -> None:
        """Run the calls waiting for a drain once nothing runs, then generate again."""
        if not self._draining or self.engine.num_running:
            return
        while self._draining:
            self._draining.popleft().run(self.engine)
        if self.engine.paused == "wait":
            self.engine.resume()

    def _step_if_aborted(self) -> None:
        """Deliver the partial outputs of requests a call aborted (pause("abort"))."""
        if self.engine.paused == "abort" and self.engine.has_unfinished_requests():
            self._step()

    def _abort_matching(self, engine: Any, request_id: str | None) -> int:
        count = 0
        for engine_id, (group, _) in list(self._routes.items()):
            if request_id is None or request_id in (engine_id, group.request_id) or \
                    engine_id.startswith(f"{request_id}-"):
                count += bool(engine.abort(engine_id, reason="aborted by an admin request"))
        if count:
            self._step()  # deliver the aborts now, even while paused
        return count

    def _add(self, group: RequestGroup) -> int:
        added: list[str] = []
        options = {"lora_name": group.lora_name} if group.lora_name else {}
        try:
            for index, (engine_id, prompt) in enumerate(
                zip(group.engine_ids, group.prompts, strict=True)
            ):
                self.engine.add_request(prompt, group.params, engine_id, **options)
                added.append(engine_id)
                self._routes[engine_id] = (group, index)
        except Exception as exc:  # bad input: the engine names the problem
            for engine_id in added:
                self._routes.pop(engine_id, None)
                self.engine.abort(engine_id)
            group.resolve(exc)
            return 0
        group.resolve(None)
        return group.num_sequences

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; aborting its requests")
            self._fail_all(EngineFailure(f"engine step failed: {exc!r}"))
            time.sleep(0.05)
            return
        batch = sum(len(out.outputs) for out in outputs)
        by_loop: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
        for out in outputs:
            route = self._routes.get(out.request_id)
            if route is None:
                continue  # aborted by its handler, or never routed
            group, index = route
            group.max_batch_size = max(group.max_batch_size, batch)
            if out.finished:
                del self._routes[out.request_id]
            by_loop.setdefault(group.loop, []).append((group, index, out))
        for loop, deliveries in by_loop.items():
            deliver_all(loop, deliveries)
        self._publish_stats()

    def _publish_stats(self) -> None:
        stats = self.engine.stats()
        now = time.monotonic()
        samples = self._token_samples
        samples.append((now, int(stats.get("generated_tokens", 0))))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_S:
            samples.popleft()
        span = now - samples[0][0]
        rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else 0.0
        self._stats = {**stats, "tokens_per_second": rate}

    def _fail_all(self, error: BaseException) -> None:
        groups = {group for group, _ in self._routes.values()}
        for engine_id in list(self._routes):
            try:
                self.engine.abort(engine_id)
            except Exception:
                log.exception("abort of %s failed", engine_id)
        self._routes.clear()
        for group in groups:
            group.fail(error)

    def _shutdown(self) -> None:
        gone = EngineUnavailable("the server is shutting down")
        self._fail_all(gone)
        while self._draining:
            self._draining.popleft().fail(gone)
        with self._lock:
            self._stopping.set()
            while True:
                try:
                    kind, group = self._inbox.get_nowait()
                except queue.Empty:
                    return
                if kind == "add" and group is not None:
                    self._queued_sequences -= group.num_sequences
                    group.fail(gone)
                elif kind == "call":
                    group.fail(gone)
