"""Sandboxes in different processes share the machine without touching each other's runs.

Two real subprocesses each run 15 snippets at once. The snippets meet through files in a
shared directory, so every run of both processes is in flight together, the second process
builds its Sandbox (start-up probe and sweep) while the first one's runs are alive, and the
second process's runs are still alive when the first process reaps and exits. A sandbox
that killed another process's uids would kill some of them, which this test then sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlserve.sandbox import Sandbox, SandboxConfig

RUNS = 15  # per process
WAIT_S = 30.0  # how long a snippet waits for the others before giving up

# Runs in each subprocess: argv = shared dir, role ("A" or "B").
WORKER = r"""
import asyncio, json, os, sys, time
from rlserve.sandbox import Sandbox, SandboxConfig

shared, role, runs, wait_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
started = os.path.join(shared, "started")
if role == "B":  # build this sandbox while A's runs are alive
    deadline = time.monotonic() + wait_s
    while len(os.listdir(started)) < runs and time.monotonic() < deadline:
        time.sleep(0.02)

SNIPPET = '''
import os, time
started = {started!r}
open(os.path.join(started, {tag!r}), "w").close()
def ready():
    if len(os.listdir(started)) < {total}:
        return False
    return {role!r} == "A" or os.path.exists({a_done!r})
deadline = time.monotonic() + {wait_s}
while not ready() and time.monotonic() < deadline:
    time.sleep(0.02)
print({tag!r}, ready())
'''

def snippet(i):
    return SNIPPET.format(started=started, tag=f"{role}{i}", total=2 * runs, role=role,
                          a_done=os.path.join(shared, "a-done"), wait_s=wait_s)

with Sandbox(SandboxConfig(max_concurrency=runs, max_sessions=1)) as sb:
    async def main():
        return await asyncio.gather(*(sb.arun(snippet(i), timeout=2 * wait_s)
                                      for i in range(runs)))
    results = asyncio.run(main())
    print(json.dumps({"uids": list(sb.sandbox_uids),
                      "results": [r.to_dict() for r in results]}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    # Under the system temp dir (not pytest's private one) so that sandbox uids can reach it.
    path = Path(tempfile.mkdtemp(prefix="rlserve-test-shared-"))
    path.chmod(0o755)
    (path / "started").mkdir(mode=0o1777)
    (path / "started").chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_worker(shared: Path, role: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", WORKER, str(shared), role, str(RUNS), str(WAIT_S)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_worker(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=4 * WAIT_S)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_processes_running_at_once_do_not_kill_each_others_runs(shared_dir: Path) -> None:
    first = start_worker(shared_dir, "A")
    second = start_worker(shared_dir, "B")
    try:
        report_a = finish_worker(first)
        (shared_dir / "a-done").touch()  # only now may B's runs end
        report_b = finish_worker(second)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for role, report in (("A", report_a), ("B", report_b)):
        got = [(r["status"], r["exit_code"], r["stdout"]) for r in report["results"]]
        assert got == [("completed", 0, f"{role}{i} True\n") for i in range(RUNS)]
    assert not set(report_a["uids"]) & set(report_b["uids"])
    if os.geteuid() == 0 and report_a["uids"]:
        assert len(set(report_a["uids"])) == len(report_b["uids"]) == RUNS + 1


# --- a run killed from outside is an infrastructure error --------------------------------


@pytest.fixture
def workdir_root() -> Iterator[Path]:
    """A parent for the sandbox's work dirs that sandbox uids can traverse."""
    path = Path(tempfile.mkdtemp(prefix="rlserve-test-workdirs-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


WAIT_TO_BE_KILLED = "open('ready', 'w').close()\nimport time\ntime.sleep(60)\n"


def kill_runs_under(root: Path, timeout_s: float = 30.0) -> list[int]:
    """Once a run under ``root`` is ready, SIGKILL every process working in a dir under
    ``root`` (the interpreter and any wrapper), as another program or the OOM killer would."""
    deadline = time.monotonic() + timeout_s
    while not list(root.glob("*/ready")):
        if time.monotonic() > deadline:
            return []
        time.sleep(0.01)
    killed = []
    for entry in os.scandir("/proc"):
        try:
            cwd = os.readlink(os.path.join(entry.path, "cwd"))
        except OSError:
            continue
        if entry.name.isdigit() and cwd.startswith(f"{root}/"):
            try:
                os.kill(int(entry.name), 9)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def run_killed_from_outside(sb: Sandbox, root: Path, session_id: str | None = None):
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(kill_runs_under(root)))
    killer.start()
    try:
        result = sb.run(WAIT_TO_BE_KILLED, timeout=30, session_id=session_id)
    finally:
        killer.join()
    assert killed, "the run never became ready"
    return result


def test_a_run_killed_from_outside_is_a_sandbox_error(workdir_root: Path) -> None:
    config = SandboxConfig(max_concurrency=1, max_sessions=1, workdir_root=str(workdir_root))
    with Sandbox(config) as sb:
        result = run_killed_from_outside(sb, workdir_root)
        assert result.status == "sandbox_error", result
        assert "killed by SIGKILL from outside the sandbox" in result.stderr
        assert result.duration_s < 30  # not the timeout
        session = run_killed_from_outside(sb, workdir_root, session_id="s")
        assert (session.status, session.state_lost) == ("sandbox_error", True), session
        # Killing itself in other ways, or failing, stays the code's own error.
        assert sb.run("import os\nos.abort()", timeout=10).status == "error"
        after = sb.run("print('fine')", timeout=10, session_id="s")
        assert (after.status, after.stdout, after.state_lost) == ("completed", "fine\n", True)


# --- the uid lease -----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids are leased as root")
POOL_BASE = 64900  # a corner of the default pool, with a private lock dir in these tests


@needs_root
def test_a_held_uid_is_skipped_and_its_processes_are_left_alone(tmp_path: Path) -> None:
    from rlserve.sandbox.uids import lease_uids

    first = lease_uids(1, POOL_BASE, 10, str(tmp_path / "locks"))
    (uid,) = first.uids
    sleeper = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    try:
        second = lease_uids(1, POOL_BASE, 10, str(tmp_path / "locks"))
        assert second.uids != first.uids
        assert sleeper.poll() is None  # the second lease's sweep did not touch `uid`
        second.release()
        first.release()
        # A uid whose holder is gone is leased again; what the holder left is killed first.
        third = lease_uids(1, POOL_BASE, 10, str(tmp_path / "locks"))
        assert third.uids == (uid,)
        assert sleeper.wait(timeout=10) == -9
        third.release()
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_root
def test_an_exhausted_pool_and_an_unsafe_lock_dir_are_clear_errors(tmp_path: Path) -> None:
    from rlserve.sandbox import UidsUnavailable

    config = SandboxConfig(
        max_concurrency=1,
        max_sessions=1,
        uid_base=POOL_BASE,
        uid_pool_size=2,
        uid_lock_dir=str(tmp_path / "locks"),
    )
    with Sandbox(config) as sb:
        assert len(sb.sandbox_uids) == 2
        with pytest.raises(UidsUnavailable, match="raise uid_pool_size"):
            Sandbox(config)
    with Sandbox(config) as again:  # closing gave the uids back
        assert again.sandbox_uids == sb.sandbox_uids
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    with pytest.raises(UidsUnavailable, match="writable by no one else"):
        Sandbox(SandboxConfig(uid_lock_dir=str(open_dir)))


def test_uid_pool_config_is_validated() -> None:
    with pytest.raises(ValueError, match="uid_pool_size"):
        SandboxConfig(max_concurrency=4, max_sessions=2, uid_pool_size=5)
    with pytest.raises(ValueError, match="uid_base"):
        SandboxConfig(uid_base=2**31 - 10)
    with pytest.raises(ValueError, match="absolute"):
        SandboxConfig(uid_lock_dir="relative/dir")


def test_a_forked_child_cannot_use_its_parents_sandbox() -> None:
    """It would run code as uids the parent holds, next to the parent's own runs."""
    with Sandbox(SandboxConfig(max_concurrency=1, max_sessions=1)) as sb:
        pid = os.fork()
        if pid == 0:
            try:
                sb.run("print(1)", timeout=5)
            except RuntimeError:
                os._exit(7)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
        assert sb.run("print(1)", timeout=5).stdout == "1\n"
