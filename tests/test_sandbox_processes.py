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
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlserve.sandbox import Sandbox, SandboxConfig
from tests.support.sandboxes import WAIT_TO_BE_KILLED, while_killing_runs_under

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


def run_killed_from_outside(sb: Sandbox, root: Path, session_id: str | None = None):
    return while_killing_runs_under(
        root, lambda: sb.run(WAIT_TO_BE_KILLED, timeout=30, session_id=session_id)
    )


def test_a_run_killed_from_outside_is_a_sandbox_error(workdir_root: Path) -> None:
    config = SandboxConfig(max_concurrency=1, max_sessions=1, workdir_root=str(workdir_root))
    with Sandbox(config) as sb:
        result = run_killed_from_outside(sb, workdir_root)
        assert result.status == "sandbox_error", result
        assert "killed by SIGKILL from outside the sandbox" in result.stderr
        assert result.duration_s < 30  # not the timeout
        # A session cannot be rerun to tell an outside kill from code killing itself.
        session = run_killed_from_outside(sb, workdir_root, session_id="s")
        assert (session.status, session.state_lost) == ("error", True), session
        assert "a session cannot be rerun" in session.stderr
        # Killing itself in other ways, or failing, stays the code's own error.
        assert sb.run("import os\nos.abort()", timeout=10).status == "error"
        after = sb.run("print('fine')", timeout=10, session_id="s")
        assert (after.status, after.stdout, after.state_lost) == ("completed", "fine\n", True)


SELF_KILL = "import os\nprint('bye', flush=True)\nos.kill(os.getpid(), 9)\n"


def test_code_that_sigkills_itself_gets_error_not_sandbox_error() -> None:
    """Else a policy could learn to SIGKILL itself to turn a failure into an infrastructure
    error, which RL usually masks out of the loss."""
    with Sandbox(SandboxConfig(max_concurrency=1, max_sessions=1)) as sb:
        result = sb.run(SELF_KILL, timeout=10)
        assert (result.status, result.exit_code, result.stdout) == ("error", -9, "bye\n"), result
        assert "a rerun died the same way" in result.stderr
        session = sb.run(SELF_KILL, timeout=10, session_id="s")
        assert (session.status, session.state_lost) == ("error", True), session


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


def test_a_lock_file_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    from rlserve.sandbox import UidsUnavailable
    from rlserve.sandbox.uids import lease_uids

    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    free = next(uid for uid in range(POOL_BASE, POOL_BASE + 100) if not has_account(uid))
    (locks / f"{free}.lock").symlink_to(tmp_path / "elsewhere")  # O_NOFOLLOW refuses it
    with pytest.raises(UidsUnavailable, match=f"cannot open the sandbox uid lock file .*{free}"):
        lease_uids(1, free, 1, str(locks))


def test_an_exhausted_pool_counts_uids_with_accounts_apart(tmp_path: Path) -> None:
    from rlserve.sandbox import UidsUnavailable
    from rlserve.sandbox.uids import lease_uids

    # Uid 0 is root everywhere: skipped, not "held by live sandboxes".
    with pytest.raises(UidsUnavailable, match=r"\(0 held by live sandboxes, 1 skipped for having"):
        lease_uids(1, 0, 1, str(tmp_path / "locks"))


def has_account(uid: int) -> bool:
    from rlserve.sandbox.uids import _has_account

    return _has_account(uid)


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


# Runs in a fresh interpreter: forks twice while a session is alive. The first child tries
# to use the sandbox and closes it; the second just exits normally, so atexit runs the
# sandbox's finalizer in the child. Neither may stop the parent's session.
FORKED_CHILD_CLOSES = r"""
import asyncio, os, sys
from rlserve.sandbox import Sandbox, SandboxConfig

sb = Sandbox(SandboxConfig(max_concurrency=1, max_sessions=1))
assert sb.run("x = 41", timeout=10, session_id="s").status == "completed"

def refused(call):
    try:
        call()
    except RuntimeError:
        return True
    return False

def use_and_close():
    if not refused(lambda: asyncio.run(sb.arun("print(1)", timeout=5))):
        os._exit(3)
    if not refused(lambda: sb.close_session("s")):
        os._exit(4)
    sb.close()
    os._exit(0)

for closes in (True, False):
    pid = os.fork()
    if pid == 0:
        if closes:
            use_and_close()
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
after = sb.run("print(x + 1)", timeout=10, session_id="s")
print(after.status, after.stdout.strip(), after.state_lost)
sb.close()
"""


def test_a_forked_child_closing_the_sandbox_leaves_the_parents_session_alone() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FORKED_CHILD_CLOSES], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["completed", "42", "False"]
