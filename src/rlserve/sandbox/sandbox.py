"""The public sandbox: run untrusted Python snippets with limits, isolation and sessions."""

from __future__ import annotations

import asyncio
import functools
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

from rlserve.sandbox.config import SandboxConfig, SandboxResult
from rlserve.sandbox.isolation import detect
from rlserve.sandbox.launcher import Launcher
from rlserve.sandbox.plan import IsolationPlan
from rlserve.sandbox.runner import run_snippet
from rlserve.sandbox.sessions import SessionPool
from rlserve.sandbox.slots import SlotPool
from rlserve.sandbox.uids import UidLease, lease_uids

MAX_SESSION_ID_CHARS = 128


class Sandbox:
    """Runs Python code in isolated, resource-limited child processes.

    Construction probes the machine once (cached per process) and keeps the strongest
    isolation that works; :attr:`isolation` names it. ``run`` blocks; ``arun`` runs in a
    worker thread so the event loop stays free. Both share one concurrency limit
    (``max_concurrency``). With ``session_id`` the code runs in a persistent interpreter.
    As root, the uids it runs code as are leased for its lifetime (see
    :mod:`rlserve.sandbox.uids`), so any number of sandboxes, in any processes, can share a
    machine. A sandbox belongs to the process that created it: in a forked child ``run``,
    ``arun`` and ``close_session`` raise RuntimeError, and ``close`` (and the clean-up at
    exit) does nothing, so the child never stops the parent's sessions or runs.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config if config is not None else SandboxConfig()
        self._pid = os.getpid()
        self.plan, lease = _detect_with_uids(self.config)
        uids = lease.uids if lease is not None else ()
        self._launcher = Launcher(self.config, self.plan, uids)
        self._slots = SlotPool(self.config.max_concurrency)
        # Session j runs as the leased uid max_concurrency + j, after the run-slot uids.
        self._sessions = SessionPool(
            self._launcher, self.config.max_concurrency, self.config.max_sessions
        )
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.max_concurrency + self.config.max_sessions,
            thread_name_prefix="rlserve-sandbox",
        )
        self._finalizer = weakref.finalize(
            self, _shutdown, self._pid, self._sessions, self._executor, lease
        )

    @property
    def isolation(self) -> str:
        """The isolation level in effect, e.g. ``"namespaces+uid+rlimits"``."""
        return self.plan.level

    @property
    def python(self) -> str:
        """The interpreter that runs snippets."""
        return self.plan.python

    @property
    def sandbox_uids(self) -> tuple[int, ...]:
        """Uids the sandbox runs code as (empty when it does not drop privileges)."""
        return self._launcher.uids if self.plan.drop_uid else ()

    def run(
        self, code: str, timeout: float | None = None, *, session_id: str | None = None
    ) -> SandboxResult:
        """Execute ``code`` and return its result; blocks while all slots are busy.

        Raises ValueError for invalid arguments; everything that goes wrong inside the
        sandbox is reported in the result instead.
        """
        timeout = self._validate(code, timeout, session_id)
        if session_id is None:
            with self._slots.slot() as index:
                return run_snippet(self._launcher, code, timeout, self._launcher.uid_for(index))
        with self._sessions.use(session_id) as session, self._slots.slot():
            return session.execute(code, timeout)

    async def arun(
        self, code: str, timeout: float | None = None, *, session_id: str | None = None
    ) -> SandboxResult:
        """Like :meth:`run`, without blocking the event loop (runs in a worker thread).

        Cancelling the awaiting task does not stop the child early; it still ends at its
        timeout.
        """
        self._validate(code, timeout, session_id)
        loop = asyncio.get_running_loop()
        call = functools.partial(self.run, code, timeout, session_id=session_id)
        return await loop.run_in_executor(self._executor, call)

    def close_session(self, session_id: str) -> bool:
        """Stop a session's interpreter; False if there was no such session."""
        self._check_process()
        return self._sessions.close(session_id)

    def close(self) -> None:
        """Stop all sessions and the worker threads (nothing in a forked child: what it
        would stop is the parent's)."""
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                "this Sandbox was created in another process (before a fork); "
                "create a new one in this process"
            )

    def _validate(self, code: object, timeout: float | None, session_id: object) -> float:
        self._check_process()
        if not isinstance(code, str):
            raise ValueError(f"code must be a string, got {type(code).__name__}")
        if len(code) > self.config.max_code_chars:
            raise ValueError(f"code is longer than max_code_chars ({self.config.max_code_chars})")
        try:
            code.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"code is not encodable as UTF-8: {exc}") from exc
        if session_id is not None and (
            not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID_CHARS
        ):
            raise ValueError(f"session_id must be a string of 1-{MAX_SESSION_ID_CHARS} chars")
        return self.config.check_timeout(timeout)


def _detect_with_uids(cfg: SandboxConfig) -> tuple[IsolationPlan, UidLease | None]:
    """Probe the isolation, holding the sandbox's uids (the probe runs as the first one);
    returns the plan and the lease kept for the sandbox's lifetime (None: no uid drop)."""
    may_drop = os.geteuid() == 0 and (cfg.isolation == "auto" or "uid" in cfg.isolation)
    if not may_drop:
        return detect(cfg), None
    lease = lease_uids(cfg.uid_count, cfg.uid_base, cfg.uid_pool_size, cfg.uid_lock_dir)
    try:
        plan = detect(cfg, probe_uid=lease.uids[0])
    except BaseException:
        lease.release()
        raise
    if not plan.drop_uid:
        lease.release()
        return plan, None
    return plan, lease


def _shutdown(
    owner_pid: int, sessions: SessionPool, executor: ThreadPoolExecutor, lease: UidLease | None
) -> None:
    # A forked child inherits this finalizer (and runs it at exit): the sessions, threads
    # and uids are the parent's, so the child must leave them alone.
    if os.getpid() != owner_pid:
        return
    sessions.close_all()
    executor.shutdown(wait=False)
    if lease is not None:
        lease.release()
