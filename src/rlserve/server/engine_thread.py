"""The engine thread's side of EngineLoop: take commands, step, deliver, shut down."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rlserve.server.admission import Admission
from rlserve.server.commands import Abort, Add, Call, Command, Wake
from rlserve.server.control import ControlPlane
from rlserve.server.loop_errors import EngineFailure, EngineUnavailable
from rlserve.server.loop_stats import PublishedStats
from rlserve.server.request_group import RequestGroup
from rlserve.server.routing import Routes

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.25  # how often an idle or paused thread republishes the stats


class EngineThread:
    """Drives `engine` from `inbox` (run() is the thread's body; only it calls the engine).

    When the engine goes from idle to busy it waits up to `flush_interval_s` for
    companions (up to `max_batch` sequences) before the first step; while busy, new
    requests join the next step. `stopping` ends it; from `abort_at` on (set by
    EngineLoop.close) whatever still runs is aborted.
    """

    def __init__(
        self,
        engine: EngineCore,
        inbox: queue.SimpleQueue[Command],
        admission: Admission,
        *,
        max_batch: int,
        flush_interval_s: float,
    ) -> None:
        self.engine = engine
        self.inbox = inbox
        self.admission = admission
        self.max_batch = max_batch
        self.flush_interval_s = flush_interval_s
        self.routes = Routes(engine)
        self.control = ControlPlane(engine, self.step)
        self.published = PublishedStats(engine)
        self.stopping = threading.Event()
        self.abort_at: float | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._abort_after_grace()
                self.control.run_drained()
                if not self.engine.has_unfinished_requests():
                    self._wait_for_work()
                    continue
                if self.control.stalled():
                    self._wait_for_command()
                self._drain_inbox()
                self.step()
        except BaseException:
            log.exception("engine loop crashed")
            raise
        finally:
            self._shutdown()

    def step(self) -> None:
        """One engine step; deliver its deltas. If `step()` itself raises, nobody can tell
        whose fault it was, and every routed group fails."""
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; aborting its requests")
            self.routes.fail_all(EngineFailure(f"engine step failed: {exc!r}"))
            time.sleep(0.05)
            return
        self.routes.deliver(outputs)
        self.publish_stats()

    def publish_stats(self) -> None:
        stats = self.published.publish()
        self.admission.engine_waiting(stats["num_waiting_sequences"])

    def abort_matching(self, request_id: str | None) -> int:
        """An admin abort: the matching requests end now, even while paused."""
        count = self.routes.abort_matching(request_id, "aborted by an admin request")
        if count:
            self.step()
        return count

    def _wait_for_work(self) -> None:
        """Block while idle; after the first request, linger for companions."""
        command = self._next_command()
        if command is None:
            return
        added = self._handle(command)
        deadline = time.monotonic() + self.flush_interval_s
        while added < self.max_batch and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                command = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            added += self._handle(command)

    def _wait_for_command(self) -> None:
        command = self._next_command()
        if command is not None:
            self._handle(command)

    def _next_command(self) -> Command | None:
        """The next command, waited for up to IDLE_POLL_S (None: fresh stats instead)."""
        try:
            return self.inbox.get(timeout=IDLE_POLL_S)
        except queue.Empty:
            self.publish_stats()
            return None

    def _drain_inbox(self) -> None:
        for command in self._queued():
            self._handle(command)

    def _queued(self) -> Iterator[Command]:
        """The commands in the inbox, taken without waiting until it is empty."""
        while True:
            try:
                yield self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, command: Command) -> int:
        """Apply one command; returns how many sequences it added."""
        match command:
            case Add(group):
                return self._add(group)
            case Abort(group):
                self.routes.withdraw(group)
            case Call(call):
                self.control.start(call)
            case Wake():
                pass
        return 0

    def _add(self, group: RequestGroup) -> int:
        self.admission.hand_over(group.num_sequences)
        added = self.routes.add(group)
        if not added:
            self.admission.refused(group.num_sequences)
        return added

    def _abort_after_grace(self) -> None:
        """After close()'s grace period, abort whatever still runs (partial outputs go to
        their clients with finish_reason "abort")."""
        if self.abort_at is None or not self.routes or time.monotonic() < self.abort_at:
            return
        log.info("shutdown grace period over: aborting %d running request(s)", len(self.routes))
        self.routes.abort_matching(None, "the server is shutting down")
        self.step()
        if self.routes:  # the engine did not report some of them: end them anyway
            self.routes.fail_all(EngineUnavailable("the server is shutting down"))

    def _shutdown(self) -> None:
        """Fail everything still routed, pending or in the inbox; admit nothing more."""
        gone = EngineUnavailable("the server is shutting down")
        self.routes.fail_all(gone)
        self.control.fail_pending(gone)
        with self.admission.lock:
            self.stopping.set()
            for command in self._queued():
                match command:
                    case Add(group):
                        self.admission.queued -= group.num_sequences
                        group.fail(gone)
                    case Call(call):
                        call.fail(gone)
