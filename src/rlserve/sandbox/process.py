"""Low-level child-process plumbing: capped pipe reading and killing what a snippet left."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

TRUNCATION_MARKER = "\n[... output truncated by the sandbox ...]\n"


class Sink(Protocol):
    """Receives bytes from one pipe; ``overflow`` stops the pump."""

    overflow: bool

    def feed(self, chunk: bytes) -> None: ...


class StreamCapture:
    """Keeps at most ``limit`` bytes of a stream and notes whether more arrived."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.overflow = False

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.data += chunk[: max(room, 0)]
            self.overflow = True
        else:
            self.data += chunk

    def text(self) -> str:
        out = self.data.decode("utf-8", errors="replace")
        return out + TRUNCATION_MARKER if self.overflow else out


def pump(
    sinks: Mapping[int, Sink],
    proc: subprocess.Popen[bytes],
    deadline: float,
    *,
    until: Callable[[], bool] | None = None,
    exit_grace_s: float = 0.2,
) -> str:
    """Read the pipes in ``sinks`` until something ends the run; returns why.

    ``"eof"``: every pipe closed; ``"exited"``: the child exited but something (a grandchild)
    still holds a pipe open; ``"deadline"``; ``"overflow"``: a sink went over its cap;
    ``"done"``: ``until()`` returned true.
    """
    selector = selectors.DefaultSelector()
    for fd in sinks:
        selector.register(fd, selectors.EVENT_READ)
    exited_at: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                return "deadline"
            if exited_at is None and has_exited(proc):
                exited_at = now
            if exited_at is not None and now - exited_at > exit_grace_s:
                return "exited"
            for key, _ in selector.select(min(deadline - now, 0.05)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                sink = sinks[key.fd]
                sink.feed(chunk)
                if sink.overflow:
                    return "overflow"
            if until is not None and until():
                return "done"
        return "eof"
    finally:
        selector.close()


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, *without* reaping it: while the zombie exists its pid
    (and so its process-group id) cannot be reused, which keeps a later killpg safe."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exited(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait (without reaping) until the child exits or ``deadline``; True if it exited."""
    while not has_exited(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def collect(proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Reap the child (waiting up to ``timeout``) and return the CPU seconds it and the
    descendants it waited for used; None when that cannot be told (it did not exit, or was
    reaped already). Sets ``proc.returncode`` like ``Popen.wait``."""
    if proc.returncode is not None or not wait_exited(proc, time.monotonic() + timeout):
        return None
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        proc.wait()
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def drain(sinks: Mapping[int, Sink]) -> None:
    """Read whatever is already buffered in the pipes, without waiting for more."""
    selector = selectors.DefaultSelector()
    for fd in sinks:
        selector.register(fd, selectors.EVENT_READ)
    try:
        while selector.get_map():
            ready = selector.select(0)
            if not ready:
                return
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                else:
                    sinks[key.fd].feed(chunk)
    finally:
        selector.close()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (it was started in a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (scanned from /proc/*/stat)."""
    found = []
    for child, path in _processes():
        try:
            with open(os.path.join(path, "stat"), encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(child)
    return found


def _processes() -> Iterator[tuple[int, str]]:
    """(pid, its /proc folder) of every process."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name), entry.path


def kill_children_first(proc: subprocess.Popen[bytes], grace_s: float = 2.0) -> None:
    """SIGKILL the child's own children and give it ``grace_s`` to exit by itself.

    Used for the ``unshare --fork`` wrapper: killing the interpreter (the pid-namespace init)
    makes the kernel kill the whole namespace, and the wrapper then reaps it and exits.
    Killing the wrapper first would orphan the interpreter to the machine's init instead.
    """
    if has_exited(proc):
        return
    for pid in children_of(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    wait_exited(proc, time.monotonic() + grace_s)


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (must be a uid dedicated to the sandbox).

    ``kill(-1)`` issued *as that uid* reaches exactly its processes, including ones that
    escaped the process group with setsid(), and the kernel blocks forks while it runs, so a
    fork bomb cannot outpace it. Requires root (to switch to ``uid``).
    """
    kill_bin = shutil.which("kill") or "/bin/kill"
    try:
        subprocess.run(
            [kill_bin, "-KILL", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        pass


def _status_fields(proc_dir: str, keys: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    with open(os.path.join(proc_dir, "status"), encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = value.split()[0] if value.split() else ""
                if len(found) == len(keys):
                    break
    return found


def processes_of_uid(uid: int) -> dict[int, int]:
    """{pid: thread count} for every process whose real uid is ``uid`` (read from /proc)."""
    return {pid: threads for pid, (owner, threads) in _process_table().items() if owner == uid}


def uids_with_processes(uids: set[int]) -> set[int]:
    """Which of ``uids`` own at least one process (one scan of /proc)."""
    return {owner for owner, _ in _process_table().values() if owner in uids}


def _process_table() -> dict[int, tuple[int, int]]:
    """{pid: (real uid, thread count)} of every process (read from /proc)."""
    found: dict[int, tuple[int, int]] = {}
    for pid, path in _processes():
        try:
            fields = _status_fields(path, ("Uid", "Threads"))
            found[pid] = (int(fields["Uid"]), int(fields.get("Threads") or 1))
        except (OSError, KeyError, ValueError):
            continue
    return found
