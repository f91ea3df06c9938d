"""Sandbox uids leased through lock files, so sandboxes in any number of processes share a
machine without touching each other's runs.

Every uid of the pool ``uid_base .. uid_base + uid_pool_size - 1`` has a lock file in a
root-owned directory. A sandbox takes an exclusive ``flock`` on each uid it uses and holds it
for its lifetime; a uid locked by anyone else (another process, or another Sandbox in this
one: flock locks belong to open files, not processes) is skipped. The kernel drops the locks
of a process that dies, so a crash leaves no stale reservation; whatever its snippets left
running is killed when the uid is next leased, by the new holder, which alone owns it then.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import stat
import tempfile
from collections.abc import Iterable

from rlserve.sandbox.process import kill_uid, uids_with_processes

LOCK_DIR_NAME = "rlserve-sandbox-uids"


class UidsUnavailable(RuntimeError):
    """Not enough free sandbox uids in the pool, or the lock directory is unsafe."""


class UidLease:
    """Uids held for one sandbox; :meth:`release` gives them back (idempotent)."""

    def __init__(self, uids: tuple[int, ...], fds: list[int]) -> None:
        self.uids = uids
        self._fds = fds

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing the only descriptor of the lock file drops the lock


def default_lock_dir() -> str:
    """``/run/rlserve-sandbox-uids`` where ``/run`` is writable (as root it is), else under
    the system temp dir. Every process on the machine must agree on it."""
    if os.path.isdir("/run") and os.access("/run", os.W_OK):
        return os.path.join("/run", LOCK_DIR_NAME)
    return os.path.join(tempfile.gettempdir(), LOCK_DIR_NAME)


def lease_uids(count: int, first: int, pool_size: int, lock_dir: str | None = None) -> UidLease:
    """Lock ``count`` free uids of ``first .. first + pool_size - 1`` and kill what earlier
    holders left running under them. UidsUnavailable when the pool has too few free uids."""
    directory = _checked_lock_dir(lock_dir or default_lock_dir())
    uids: list[int] = []
    fds: list[int] = []
    with_accounts = held = 0
    try:
        for uid in range(first, first + pool_size):
            if len(uids) == count:
                break
            if _has_account(uid):
                with_accounts += 1  # a real user or group: never run snippets as it, nor kill it
                continue
            fd = _try_lock(directory, uid)
            if fd is None:
                held += 1
            else:
                uids.append(uid)
                fds.append(fd)
        if len(uids) < count:
            raise UidsUnavailable(
                f"only {len(uids)} of the {count} sandbox uids needed are free in "
                f"{first}..{first + pool_size - 1} ({held} held by live sandboxes, "
                f"{with_accounts} skipped for having a passwd or group entry); "
                "raise uid_pool_size or lower max_concurrency / max_sessions"
            )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    kill_leftovers(uids)
    return UidLease(tuple(uids), fds)


def kill_leftovers(uids: Iterable[int]) -> None:
    """Kill every process of ``uids``; only ever called for uids this process has locked."""
    for uid in sorted(uids_with_processes(set(uids))):
        kill_uid(uid)


def _checked_lock_dir(path: str) -> str:
    """Create the lock directory (mode 0700) or check that an existing one is ours: a
    directory someone else could write to would let them hold (or fake) every lock."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UidsUnavailable(
            f"cannot create the sandbox uid lock directory {path}: {exc}"
        ) from exc
    info = os.lstat(path)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise UidsUnavailable(
            f"the sandbox uid lock directory {path} must be a directory owned by uid "
            f"{os.geteuid()} and writable by no one else"
        )
    return path


def _try_lock(directory: str, uid: int) -> int | None:
    """An open descriptor holding the exclusive lock of ``uid``, or None if it is taken."""
    path = os.path.join(directory, f"{uid}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # too many open files, a link or a directory in its place...
        raise UidsUnavailable(f"cannot open the sandbox uid lock file {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise UidsUnavailable(f"cannot lock the sandbox uid lock file {path}: {exc}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def _has_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False
