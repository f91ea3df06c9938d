"""The one thread that drives the Engine; HTTP handlers talk to it through a queue.

The Engine is not thread-safe, so only this thread calls it. Handlers `submit()` a
RequestGroup (never blocking the event loop) and get deltas back through the group's
asyncio queue. When the engine goes from idle to busy the thread waits up to
`flush_interval_s` for companions (up to `max_batch` sequences) before the first step;
while busy, new requests join the next step (continuous batching).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from rlserve.sampling_params import SamplingParams
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
        self._inbox: queue.SimpleQueue[tuple[str, RequestGroup | None]] = queue.SimpleQueue()
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
        self, prompts: list[Prompt], params: SamplingParams, lora_name: str | None = None
    ) -> RequestGroup:
        """Queue prompts for the engine (on LoRA adapter `lora_name`, if given); await
        `group.accepted()` to learn whether it took them."""
        loop = asyncio.get_running_loop()
        group = RequestGroup(prompts, params, loop, self._request_abort, lora_name)
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

    # ---- engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self.engine.has_unfinished_requests():
                    self._wait_for_work()
                    continue
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

    def _drain_inbox(self) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(command)

    def _handle(self, command: tuple[str, RequestGroup | None]) -> int:
        """Apply one command; returns how many sequences it added."""
        kind, group = command
        if group is None:
            return 0
        if kind == "abort":
            for engine_id in group.engine_ids:
                if self._routes.pop(engine_id, None) is not None:
                    self.engine.abort(engine_id)
            return 0
        with self._lock:
            self._queued_sequences -= group.num_sequences
        return self._add(group)

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
        self._fail_all(EngineUnavailable("the server is shutting down"))
        with self._lock:
            self._stopping.set()
            while True:
                try:
                    kind, group = self._inbox.get_nowait()
                except queue.Empty:
                    return
                if kind == "add" and group is not None:
                    self._queued_sequences -= group.num_sequences
                    group.fail(EngineUnavailable("the server is shutting down"))
