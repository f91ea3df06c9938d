"""The one thread that drives the Engine; HTTP handlers talk to it through a queue.

The Engine is not thread-safe, so only this thread calls it. Handlers `submit()` a
RequestGroup (never blocking the event loop) and get deltas back through the group's
asyncio queue. When the engine goes from idle to busy the thread waits up to
`flush_interval_s` for companions (up to `max_batch` sequences) before the first step;
while busy, new requests join the next step (continuous batching).

`call(fn)` runs `fn(engine)` on this thread between two steps (weight updates, adapters,
pause/resume); the stats are republished before its caller hears back, so `/health` and
`/metrics` show what an admin call changed as soon as it returns. While the engine is
paused nothing is scheduled, so the thread blocks on its inbox instead of stepping in a
tight loop.

`close(grace_s)` begins a graceful shutdown: nothing new is admitted, running requests go
on for `grace_s` seconds and are then aborted (their clients get `finish_reason` "abort"
with their partial output); `stop()` ends the thread.
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


class TooManySequences(Exception):
    """One request has more sequences than the queue may ever hold (HTTP 400)."""


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
        # Guards admission (the queue counts and the inbox, against shutdown's drain). Only
        # the engine thread writes `_waiting_sequences`; it takes the lock too, so a submit
        # never sees a group counted twice or not at all.
        self._lock = threading.Lock()
        self._queued_sequences = 0  # submitted, not yet handed to the engine
        self._waiting_sequences = 0  # handed over, not yet running (forks to come included)
        self._stats: dict[str, Any] = {**self._engine_state(), "tokens_per_second": 0.0}
        self._token_samples: deque[tuple[float, int]] = deque()
        self._stopping = threading.Event()
        self._closing = threading.Event()  # close(): admit nothing new
        self._abort_at: float | None = None  # close(): abort what still runs from then on
        self._paused_for_drain = False  # whether the pause("wait") is ours, not an operator's
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

    def close(self, grace_s: float) -> None:
        """Graceful shutdown (any thread, a signal handler included): refuse new requests
        (503) from now on, and abort those still running `grace_s` seconds later."""
        if self._closing.is_set():
            return
        self._abort_at = time.monotonic() + max(0.0, grace_s)
        self._closing.set()
        self._inbox.put(("wake", None))

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
        return self._queued_sequences + self._waiting_sequences

    def stats(self) -> dict[str, Any]:
        """The engine's counters after the latest step, plus queue depth, tokens/s and the
        pause mode in force (`paused`: None or "keep"/"wait"/"abort")."""
        return {**self._stats, "queue_depth": self.queue_depth}

    def check_admissible(self, num_sequences: int) -> None:
        """Raise what `submit()` would for `num_sequences` more sequences right now: a
        cheap early refusal, before a handler tokenises (`submit()` checks again)."""
        with self._lock:
            self._refuse_unless_admissible(num_sequences)

    def _refuse_unless_admissible(self, num_sequences: int) -> None:
        """Under `_lock`: EngineUnavailable, TooManySequences or Overloaded, if due."""
        if self.closing:
            raise EngineUnavailable("the server is shutting down; retry on another replica")
        if not self.running:
            raise EngineUnavailable("the engine is not running (starting or stopping)")
        if num_sequences > self.max_queue:
            raise TooManySequences(
                f"this request has {num_sequences} sequences (prompts x n) but at most "
                f"{self.max_queue} may wait (--max-queue); send fewer prompts or a smaller n"
            )
        if self.queue_depth + num_sequences > self.max_queue:
            raise Overloaded(
                f"server overloaded: {self.queue_depth} sequences are already waiting "
                f"(limit --max-queue {self.max_queue}); retry later"
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
        with self._lock:  # shutdown drains the inbox under this lock: nothing slips past it
            self._refuse_unless_admissible(group.num_sequences)
            self._queued_sequences += group.num_sequences
            self._inbox.put(("add", group))
        return group

    def _request_abort(self, group: RequestGroup) -> None:
        self._inbox.put(("abort", group))

    async def call(
        self,
        fn: Callable[[Any], Any],
        drain: bool = False,
        check: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run `fn(engine)` on the engine thread between two steps; its result or exception
        comes back here. `drain`: first pause("wait") until no request runs, then resume.
        `check(engine)` runs before that pause; if it raises, nothing else happens."""
        call = EngineCall(self._then_publish(fn), asyncio.get_running_loop(), drain, check)
        with self._lock:
            if not self.running:
                raise EngineUnavailable("the engine is not running (starting or stopping)")
            self._inbox.put(("call", call))
        return await call.future

    def _then_publish(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`fn`, then fresh stats before its caller hears back (read-your-writes)."""

        def run(engine: Any) -> Any:
            try:
                return fn(engine)
            finally:
                self._publish_stats()

        return run

    async def update(
        self,
        fn: Callable[[Any], Any],
        mode: str = "keep",
        check: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run the weight update `fn(engine)` in pause `mode`: "keep" between two steps,
        "wait" once running requests finished (they keep streaming meanwhile), "abort"
        after aborting every request (their partial outputs are delivered first).
        `check(engine)` runs before anything is paused or aborted: when it raises, running
        requests are untouched. An operator's earlier pause outlives the update."""
        if mode == "keep":
            return await self.call(fn, check=check)
        if mode == "wait":
            return await self.call(fn, drain=True, check=check)
        if mode == "abort":
            return await self.call(self._after_abort(fn), check=check)
        raise ValueError(f"mode must be one of 'keep', 'wait', 'abort', got {mode!r}")

    async def pause(self, mode: str) -> None:
        """An operator's pause: it stays until `resume()`, whatever updates run meanwhile."""
        await self.call(lambda engine: self._operator_pause(engine, mode))

    async def resume(self, recompute_kv: bool = False) -> None:
        """End an operator's pause (a pending "wait" update keeps draining first)."""
        await self.call(lambda engine: self._operator_resume(engine, recompute_kv))

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
                else:
                    engine.pause(before)  # nothing is left to abort; the pause goes on

        return run

    async def abort_requests(self, request_id: str | None = None) -> int:
        """Abort the routed requests matching `request_id` (None: all); their responses end
        with finish_reason "abort". Returns how many engine requests were aborted."""
        return await self.call(lambda engine: self._abort_matching(engine, request_id))

    # ---- engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._abort_after_grace()
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
        paused = self.engine.paused
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
        with self._lock:  # moved from one count to the other: never briefly uncounted
            self._queued_sequences -= group.num_sequences
            self._waiting_sequences += group.num_sequences
        added = self._add(group)
        if not added:
            with self._lock:
                self._waiting_sequences -= group.num_sequences
        return added

    def _start_call(self, call: EngineCall) -> None:
        if not call.passes_check(self.engine):
            return  # refused before anything was paused or aborted
        if call.drain and self.engine.paused is None:
            self.engine.pause("wait")
            self._paused_for_drain = True
            self._draining.append(call)
            return
        if call.drain and self.engine.paused == "wait":
            self._draining.append(call)
            return
        call.run(self.engine)
        self._step_if_aborted()

    def _run_drained_calls(self) -> None:
        """Run the calls waiting for a drain once nothing runs, then generate again
        (unless the pause is an operator's)."""
        if not self._draining or self.engine.num_running:
            return
        while self._draining:
            self._draining.popleft().run(self.engine)
        if self._paused_for_drain and self.engine.paused == "wait":
            self.engine.resume()
        self._paused_for_drain = False

    def _operator_pause(self, engine: Any, mode: str) -> None:
        engine.pause(mode)
        self._paused_for_drain = False  # the operator's now: only resume() ends it

    def _operator_resume(self, engine: Any, recompute_kv: bool) -> None:
        engine.resume(recompute_kv=recompute_kv)
        if self._draining:  # a "wait" update is pending: keep draining for it
            engine.pause("wait")
        self._paused_for_drain = bool(self._draining)

    def _abort_after_grace(self) -> None:
        """After close()'s grace period, abort whatever still runs (partial outputs go to
        their clients with finish_reason "abort")."""
        if self._abort_at is None or not self._routes or time.monotonic() < self._abort_at:
            return
        log.info("shutdown grace period over: aborting %d running request(s)", len(self._routes))
        for engine_id in list(self._routes):
            self.engine.abort(engine_id, reason="the server is shutting down")
        self._step()
        if self._routes:  # the engine did not report some of them: end them anyway
            self._fail_all(EngineUnavailable("the server is shutting down"))

    def _step_if_aborted(self) -> None:
        """Deliver the partial outputs of requests a call aborted (pause("abort"))."""
        if self.engine.paused == "abort" and self.engine.has_unfinished_requests():
            self._step()

    def _abort_matching(self, engine: Any, request_id: str | None) -> int:
        count = 0
        for engine_id, (group, _) in list(self._routes.items()):
            if (
                request_id is None
                or request_id in (engine_id, group.request_id)
                or engine_id.startswith(f"{request_id}-")
            ):
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
        """One engine step; deliver its deltas. A request the engine failed alone (its
        delta has `error`) fails its whole group, and only that group; if `step()` itself
        raises, nobody can tell whose fault it was, and every routed group fails."""
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; aborting its requests")
            self._fail_all(EngineFailure(f"engine step failed: {exc!r}"))
            time.sleep(0.05)
            return
        batch = sum(len(out.outputs) for out in outputs)
        by_loop: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
        failed: set[RequestGroup] = set()
        for out in outputs:
            route = self._routes.get(out.request_id)
            if route is None:
                continue  # aborted by its handler, or never routed
            group, index = route
            if out.error:
                self._fail_group(group, EngineFailure(f"request failed in the engine: {out.error}"))
                failed.add(group)
                continue
            group.max_batch_size = max(group.max_batch_size, batch)
            if out.finished:
                del self._routes[out.request_id]
            by_loop.setdefault(group.loop, []).append((group, index, out))
        for loop, deliveries in by_loop.items():
            kept = [d for d in deliveries if d[0] not in failed]
            if kept:
                deliver_all(loop, kept)
        self._publish_stats()

    def _fail_group(self, group: RequestGroup, error: EngineFailure) -> None:
        """End `group` with `error`, aborting its other prompts still in the engine."""
        for engine_id in group.engine_ids:
            if self._routes.pop(engine_id, None) is not None:
                self.engine.abort(engine_id)
        group.fail(error)

    def _engine_state(self) -> dict[str, Any]:
        """What handlers may read of the engine (on its own thread, only this is safe):
        its counters, the pause mode and the adapter names."""
        engine = self.engine
        return {**engine.stats(), "paused": engine.paused, "adapters": sorted(engine.adapters)}

    def _publish_stats(self) -> None:
        stats = self._engine_state()
        now = time.monotonic()
        samples = self._token_samples
        samples.append((now, int(stats.get("generated_tokens", 0))))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_S:
            samples.popleft()
        span = now - samples[0][0]
        rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else 0.0
        self._stats = {**stats, "tokens_per_second": rate}
        with self._lock:
            self._waiting_sequences = stats["num_waiting_sequences"]  # n > 1: forks included

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
