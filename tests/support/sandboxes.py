"""Killing a sandbox run from outside, as another program or the OOM killer would
(shared by test_sandbox_processes.py and test_tir.py)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Waits to be killed, unless a kill already happened (the flag file is in the parent of
# its work dir): the sandbox reruns a run killed from outside once, and that rerun ends.
KILLED_FLAG = "killed-once"
WAIT_TO_BE_KILLED = (
    "import os, time\n"
    f"if os.path.exists('../{KILLED_FLAG}'):\n"
    "    print('rerun')\n"
    "else:\n"
    "    open('ready', 'w').close()\n"
    "    time.sleep(60)\n"
)


def kill_runs_under(root: Path, timeout_s: float = 30.0) -> list[int]:
    """Once a run under ``root`` is ready, SIGKILL every process working in its dir (the
    interpreter and any wrapper), as another program or the OOM killer would. The flag that
    lets a rerun end is left first, and a rerun works in a new dir, so it is not killed."""
    deadline = time.monotonic() + timeout_s
    while not (ready := list(root.glob("*/ready"))):
        if time.monotonic() > deadline:
            return []
        time.sleep(0.01)
    (root / KILLED_FLAG).touch()
    dirs = {str(path.parent) for path in ready}
    killed = []
    for entry in os.scandir("/proc"):
        try:
            cwd = os.readlink(os.path.join(entry.path, "cwd"))
        except OSError:
            continue
        if entry.name.isdigit() and cwd in dirs:
            try:
                os.kill(int(entry.name), 9)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def while_killing_runs_under(root: Path, action: Callable[[], T]) -> T:
    """`action()`, while another thread SIGKILLs the first run under `root` that gets ready
    (see `kill_runs_under`); asserts a run was killed."""
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(kill_runs_under(root)))
    killer.start()
    try:
        result = action()
    finally:
        killer.join()
        (root / KILLED_FLAG).unlink(missing_ok=True)
    assert killed, "the run never became ready"
    return result
