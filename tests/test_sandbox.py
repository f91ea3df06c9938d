"""Sandbox: limits, isolation, statuses, concurrency, sessions and the HTTP service.

Hostile snippets use short timeouts, and every one of them is followed by a check that the
machine is unaffected: no process of the sandbox uids is left and a normal snippet still runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from rlserve.sandbox import Sandbox, SandboxConfig, SandboxResult
from rlserve.sandbox.process import TRUNCATION_MARKER, processes_of_uid
from rlserve.sandbox.service import create_sandbox_app

OUTPUT_CAP = 64 * 1024


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(SandboxConfig(max_concurrency=4, max_sessions=2, max_output_bytes=OUTPUT_CAP))
    yield sb
    sb.close()


def leftover_processes(sb: Sandbox) -> dict[int, dict[int, int]]:
    """Processes still owned by a sandbox uid (waits briefly for SIGKILLed ones to vanish)."""
    deadline = time.monotonic() + 3.0
    while True:
        found = {uid: procs for uid in sb.sandbox_uids if (procs := processes_of_uid(uid))}
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def assert_machine_fine(sb: Sandbox) -> None:
    assert leftover_processes(sb) == {}
    assert subprocess.run(["true"], check=False).returncode == 0
    result = sb.run("print('still fine')", timeout=5)
    assert (result.status, result.stdout) == ("completed", "still fine\n")


def require_uid_isolation(sb: Sandbox) -> None:
    if os.geteuid() == 0 and not sb.plan.drop_uid:
        pytest.skip("running as root without a sandbox uid: the check would not be contained")


# --- statuses ----------------------------------------------------------------------------


def test_normal_snippet_completes(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "import os, sys\nprint('hello', 6 * 7)\nprint(os.getcwd() == os.environ['HOME'])\n"
        "print(sorted(os.environ) == sorted(set(os.environ) & {'PATH', 'HOME', 'TMPDIR', "
        "'PWD', 'LANG', 'LC_ALL', 'PYTHONDONTWRITEBYTECODE', 'PYTHONUNBUFFERED'}))\n"
        "print('warn', file=sys.stderr)",
        timeout=5,
    )
    assert result.status == "completed"
    assert result.stdout == "hello 42\nTrue\nTrue\n"
    assert result.stderr == "warn\n"
    assert (result.exit_code, result.truncated) == (0, False)
    assert 0 < result.duration_s < 5


def test_work_dir_is_fresh_and_removed(sandbox: Sandbox) -> None:
    code = "import os\nopen('f.txt', 'w').write('x')\nprint(os.getcwd(), os.listdir('.'))"
    first = sandbox.run(code, timeout=5)
    second = sandbox.run(code, timeout=5)
    assert first.status == second.status == "completed"
    cwd1, cwd2 = first.stdout.split()[0], second.stdout.split()[0]
    assert cwd1 != cwd2 and "'f.txt'" in first.stdout
    assert not os.path.exists(cwd1) and not os.path.exists(cwd2)


def test_sys_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nsys.exit(3)", timeout=5)
    assert (result.status, result.exit_code) == ("error", 3)


def test_exception_and_syntax_error(sandbox: Sandbox) -> None:
    raised = sandbox.run("raise KeyError('boom')", timeout=5)
    assert raised.status == "error" and "KeyError: 'boom'" in raised.stderr
    broken = sandbox.run("def f(:\n    pass", timeout=5)
    assert broken.status == "error" and "SyntaxError" in broken.stderr
    assert broken.exit_code == 1


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = sandbox.run("print('started')\nwhile True:\n    pass", timeout=1.0)
    assert result.status == "timeout"
    assert result.stdout == "started\n"  # unbuffered: output before the kill is kept
    assert result.exit_code is None
    assert time.monotonic() - started < 4
    assert_machine_fine(sandbox)


def test_cpu_limit_is_reported_as_timeout() -> None:
    config = SandboxConfig(cpu_time_s=1, max_concurrency=1, max_sessions=1)
    with Sandbox(config) as sb:
        result = sb.run("while True:\n    pass", timeout=30)
        # Ignoring SIGXCPU only gets it the hard limit's SIGKILL: still a timeout, not an
        # outside kill (an infrastructure error).
        ignored = sb.run(IGNORE_SIGXCPU, timeout=30)
    assert result.status == "timeout" and result.duration_s < 25  # the CPU limit, not the wall
    assert ignored.status == "timeout" and ignored.duration_s < 25, ignored


IGNORE_SIGXCPU = (
    "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
)


def test_huge_allocation_is_memory(sandbox: Sandbox) -> None:
    result = sandbox.run("b = bytearray(10 * 1024**3)\nprint('allocated')", timeout=5)
    assert result.status == "memory"
    assert "MemoryError" in result.stderr and "allocated" not in result.stdout
    assert_machine_fine(sandbox)


def test_output_flood_is_capped(sandbox: Sandbox) -> None:
    code = "import sys\nchunk = 'x' * 2**20\nfor _ in range(100):\n    sys.stdout.write(chunk)"
    result = sandbox.run(code, timeout=10)
    assert result.status == "output_limit" and result.truncated
    assert result.stdout.endswith(TRUNCATION_MARKER)
    assert len(result.stdout) <= OUTPUT_CAP + len(TRUNCATION_MARKER)
    assert result.duration_s < 8  # killed at the cap, not at the timeout
    assert_machine_fine(sandbox)


def test_writing_outside_the_work_dir_fails(sandbox: Sandbox) -> None:
    require_uid_isolation(sandbox)
    for path in ("/etc/rlserve_test", "/root/rlserve_test"):
        result = sandbox.run(f"open({path!r}, 'w').write('x')", timeout=5)
        assert result.status == "error", result
        assert "PermissionError" in result.stderr or "Permission denied" in result.stderr
        assert not os.path.exists(path)


def test_network_is_unreachable(sandbox: Sandbox) -> None:
    if not sandbox.plan.uses_namespaces:
        pytest.skip(f"no network namespace at isolation {sandbox.isolation!r}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
        result = sandbox.run(code, timeout=5)
        assert result.status == "error"
        assert "OSError" in result.stderr or "Error" in result.stderr.splitlines()[-1]
        with pytest.raises(BlockingIOError):  # nothing reached the listener
            listener.accept()


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    require_uid_isolation(sandbox)
    # First prove the process limit is in force with a bounded number of forks.
    probe = (
        "import os, time\nn = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(5)\n"
        "        os._exit(0)\n    n += 1\nprint(n)"
    )
    bounded = sandbox.run(probe, timeout=5)
    assert bounded.status == "completed", bounded
    assert int(bounded.stdout) < sandbox.config.max_processes
    assert leftover_processes(sandbox) == {}
    bomb = sandbox.run("import os\nwhile True:\n    os.fork()", timeout=2)
    assert bomb.status in ("timeout", "error")
    assert_machine_fine(sandbox)


# --- concurrency -------------------------------------------------------------------------


@pytest.fixture
def meeting_dir() -> Iterator[str]:
    """A directory every sandbox uid can write to (pytest's own tmp dir is private)."""
    path = tempfile.mkdtemp(prefix="rlserve-test-meet-")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Each run marks itself active in `meet` while it runs and waits until it has seen another
# run active at the same time (or learns that two already met) and the event loop's tick
# file exists. A sandbox that ran one snippet at a time, or blocked the event loop in
# arun, makes the runs wait out their deadline and report False.
MEETING_RUN = """
import os, time
meet = {meet!r}
me = os.path.join(meet, "active-" + os.urandom(8).hex())
open(me, "w").close()
met = os.path.join(meet, "met")
peak = 0
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    active = [n for n in os.listdir(meet) if n.startswith("active-")]
    peak = max(peak, len(active))
    if peak >= 2 and not os.path.exists(met):
        try:
            open(met, "x").close()
        except FileExistsError:  # another run (another uid) was first
            pass
    if os.path.exists(met) and os.path.exists(os.path.join(meet, "tick")):
        break
    time.sleep(0.01)
os.remove(me)
print(peak, os.path.exists(met), os.path.exists(os.path.join(meet, "tick")))
"""


def test_concurrent_runs_respect_the_limit(sandbox: Sandbox, meeting_dir: str) -> None:
    code = MEETING_RUN.format(meet=meeting_dir)

    async def ticker() -> None:
        await asyncio.sleep(0.01)  # runs only while the loop is free, i.e. during the runs
        open(os.path.join(meeting_dir, "tick"), "w").close()

    async def main() -> list[SandboxResult]:
        runs = [asyncio.ensure_future(sandbox.arun(code, timeout=30)) for _ in range(12)]
        await ticker()
        return list(await asyncio.gather(*runs))

    results = asyncio.run(main())
    assert [r.status for r in results] == ["completed"] * 12, results
    seen = [r.stdout.split() for r in results]
    assert all(flags == ["True", "True"] for _, *flags in seen), seen
    # The files active at once never outnumber the runs in flight.
    assert 2 <= max(int(peak) for peak, *_ in seen) <= sandbox.config.max_concurrency


# --- sessions ----------------------------------------------------------------------------


def test_session_keeps_state_and_reports_loss(sandbox: Sandbox) -> None:
    assert sandbox.run("x = 41", session_id="s1").status == "completed"
    kept = sandbox.run("x += 1\nprint(x)", session_id="s1")
    assert (kept.status, kept.stdout, kept.state_lost) == ("completed", "42\n", False)
    failed = sandbox.run("import sys\nsys.exit(4)", session_id="s1")
    assert (failed.status, failed.exit_code, failed.state_lost) == ("error", 4, False)
    assert sandbox.run("print(x)", session_id="s1").stdout == "42\n"
    other = sandbox.run("print('x' in globals())", session_id="s2")
    assert other.stdout == "False\n"

    hung = sandbox.run("while True:\n    pass", session_id="s1", timeout=1)
    assert (hung.status, hung.state_lost, hung.session_id) == ("timeout", True, "s1")
    fresh = sandbox.run("print(x)", session_id="s1")
    assert fresh.status == "error" and "NameError" in fresh.stderr and fresh.state_lost
    again = sandbox.run("x = 1\nprint(x)", session_id="s1")
    assert (again.stdout, again.state_lost) == ("1\n", False)

    assert sandbox.close_session("s1") and sandbox.close_session("s2")
    assert not sandbox.close_session("s1")
    assert_machine_fine(sandbox)


# --- HTTP service ------------------------------------------------------------------------


def test_service_execute_and_health(sandbox: Sandbox) -> None:
    with TestClient(create_sandbox_app(sandbox)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["isolation"] == sandbox.isolation
        done = client.post("/execute", json={"code": "print(2 + 2)", "timeout": 5}).json()
        assert (done["status"], done["stdout"], done["exit_code"]) == ("completed", "4\n", 0)
        client.post("/execute", json={"code": "y = 5", "session_id": "http"})
        kept = client.post("/execute", json={"code": "print(y)", "session_id": "http"}).json()
        assert kept["stdout"] == "5\n" and kept["session_id"] == "http"
        assert client.delete("/sessions/http").status_code == 200
        assert client.post("/execute", json={"code": 123}).status_code == 422
        assert client.post("/execute", json={"code": "1", "timeout": 0}).status_code == 422
        assert client.post("/execute", json={"code": "1", "timeout": 10**6}).status_code == 400


# --- configuration and bad input ---------------------------------------------------------


def test_two_sandboxes_in_one_process_get_disjoint_uids(sandbox: Sandbox) -> None:
    if not sandbox.sandbox_uids:
        pytest.skip("this sandbox does not run code under dedicated uids")
    with Sandbox(SandboxConfig(max_concurrency=2, max_sessions=1)) as other:
        assert len(other.sandbox_uids) == 3
        assert not set(other.sandbox_uids) & set(sandbox.sandbox_uids)
        assert other.run("import os\nprint(os.getuid())", timeout=5).stdout.strip() in {
            str(uid) for uid in other.sandbox_uids
        } | {"0"}  # 0 where the user namespace maps the uid to root
    assert_machine_fine(sandbox)


def test_isolation_level_is_reported(sandbox: Sandbox) -> None:
    from rlserve.sandbox import ISOLATION_LEVELS

    assert sandbox.isolation in ISOLATION_LEVELS
    assert sandbox.isolation.endswith("rlimits")
    weakest = Sandbox(SandboxConfig(isolation="rlimits", max_concurrency=1, max_sessions=1))
    try:
        assert weakest.isolation == "rlimits"
        assert weakest.run("print(1)", timeout=5).stdout == "1\n"
    finally:
        weakest.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"isolation": "bogus"},
        {"memory_bytes": 0},
        {"max_concurrency": 1.5},
        {"timeout_s": -1},
        {"timeout_s": 20, "max_timeout_s": 10},
        {"max_output_bytes": True},
        {"extra_env": {"A": 1}},
    ],
)
def test_bad_config_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_run_arguments(sandbox: Sandbox) -> None:
    for code, timeout, session in [
        (123, 5.0, None),
        (None, 5.0, None),
        ("print(1)", 0, None),
        ("print(1)", -1, None),
        ("print(1)", float("nan"), None),
        ("print(1)", 10**6, None),
        ("print(1)", 5.0, ""),
        ("print('\ud800')", 5.0, None),
    ]:
        with pytest.raises(ValueError):
            sandbox.run(code, timeout, session_id=session)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        asyncio.run(sandbox.arun(b"print(1)"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SandboxResult(status="weird")


def test_rlserve_sandbox_cli_serves_over_http(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Default uid pool: the service shares it with this process's sandboxes.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlserve.cli",
            "sandbox",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                health = httpx.get(f"{url}/health", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health["isolation"]
        result = httpx.post(f"{url}/execute", json={"code": "print(6 * 7)"}, timeout=30).json()
        assert result["status"] == "completed" and result["stdout"].strip() == "42"
        bad = httpx.post(f"{url}/execute", json={"code": 5}, timeout=30)
        assert bad.status_code in (400, 422)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
