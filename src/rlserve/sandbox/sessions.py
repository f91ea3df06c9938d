"""The set of live sessions, each with its own dedicated uid slot."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from rlserve.sandbox.launcher import Launcher
from rlserve.sandbox.session import Session


class SessionPool:
    """Creates sessions on first use; when full, evicts the least recently used idle one."""

    def __init__(self, launcher: Launcher, first_index: int, size: int) -> None:
        self.launcher = launcher
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._free = list(range(first_index, first_index + size))
        self._index: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @contextmanager
    def use(self, session_id: str) -> Iterator[Session]:
        """Yield the live session ``session_id``, locked for the caller's exclusive use."""
        while True:
            session = self._get(session_id)
            session.lock.acquire()
            if not session.closed:
                break
            session.lock.release()  # evicted between lookup and lock; look it up again
        try:
            yield session
        finally:
            session.lock.release()

    def close(self, session_id: str) -> bool:
        """Stop one session; False if it did not exist."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is None:
                return False
            index = self._index.pop(session_id)
        with session.lock:
            session.close()
        with self._lock:
            # Only now: a new session on this uid must not meet the old one's processes.
            self._free.append(index)
        return True

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._sessions)
        for session_id in ids:
            self.close(session_id)

    def _get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                self._sessions.move_to_end(session_id)
                return session
            if not self._free:
                self._evict_idle()
            index = self._free.pop()
            session = Session(self.launcher, session_id, self.launcher.uid_for(index))
            self._sessions[session_id] = session
            self._index[session_id] = index
            return session

    def _evict_idle(self) -> None:
        for old_id, old in self._sessions.items():
            if old.lock.acquire(blocking=False):
                try:
                    old.close()
                finally:
                    old.lock.release()
                del self._sessions[old_id]
                self._free.append(self._index.pop(old_id))
                return
        raise RuntimeError("all sandbox sessions are busy; raise max_sessions")
