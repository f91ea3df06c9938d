"""Run one snippet in a fresh child process and collect its result."""

from __future__ import annotations

import os
import time

from rlserve.sandbox.classify import blame_the_code, classify_ending, killed_from_outside
from rlserve.sandbox.config import SandboxResult
from rlserve.sandbox.launcher import Launcher
from rlserve.sandbox.limits import cpu_soft_limit
from rlserve.sandbox.process import StreamCapture, pump, wait_exited
from rlserve.sandbox.workdir import make_workdir, remove_workdir

SCRIPT_NAME = "main.py"


def run_snippet(launcher: Launcher, code: str, timeout: float, uid: int | None) -> SandboxResult:
    """Execute ``code``; never raises for problems of the snippet or the sandbox.

    A run killed by a SIGKILL none of the sandbox's limits sent is run once more: code that
    kills itself dies the same way again and gets ``error`` (else it could pass its own
    failure off as an infrastructure error); otherwise the first run's ``sandbox_error``
    stands.
    """
    first = _run_once(launcher, code, timeout, uid)
    if not killed_from_outside(first):
        return first
    second = _run_once(launcher, code, timeout, uid)
    result = blame_the_code(second) if killed_from_outside(second) else first
    result.duration_s = round(first.duration_s + second.duration_s, 4)
    return result


def _run_once(launcher: Launcher, code: str, timeout: float, uid: int | None) -> SandboxResult:
    started = time.monotonic()
    try:
        workdir = make_workdir(launcher.config.workdir_root, uid)
    except OSError as exc:
        return SandboxResult("sandbox_error", stderr=f"cannot create work dir: {exc}")
    try:
        _write_script(workdir, code, uid)
        return _execute(launcher, workdir, timeout, uid, started)
    except OSError as exc:
        return SandboxResult(
            "sandbox_error",
            stderr=f"sandbox failure: {exc}",
            duration_s=time.monotonic() - started,
        )
    finally:
        remove_workdir(workdir)


def _write_script(workdir: str, code: str, uid: int | None) -> None:
    path = os.path.join(workdir, SCRIPT_NAME)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(code)
    if uid is not None:
        os.chown(path, uid, uid)


def _execute(
    launcher: Launcher, workdir: str, timeout: float, uid: int | None, started: float
) -> SandboxResult:
    cfg = launcher.config
    cpu_s = cfg.cpu_time_s if cfg.cpu_time_s is not None else timeout + 1.0
    deadline = time.monotonic() + timeout
    proc = launcher.spawn([SCRIPT_NAME], workdir=workdir, uid=uid, cpu_s=cpu_s)
    out, err = StreamCapture(cfg.max_output_bytes), StreamCapture(cfg.max_output_bytes)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        reason = pump({proc.stdout.fileno(): out, proc.stderr.fileno(): err}, proc, deadline)
        if reason in ("eof", "exited") and not wait_exited(proc, deadline):
            reason = "deadline"
    finally:
        cpu_used_s = launcher.reap(proc, uid)
    stderr = err.text()
    exit_code = launcher.plan.exit_code(proc.returncode)
    status, stderr = classify_ending(
        reason, exit_code, stderr, cpu_used_s, cpu_soft_limit(cpu_s), rerunnable=True
    )
    return SandboxResult(
        status=status,
        stdout=out.text(),
        stderr=stderr,
        truncated=out.overflow or err.overflow,
        # The sandbox's own SIGKILL says nothing about the snippet.
        exit_code=None if reason in ("deadline", "overflow") else exit_code,
        duration_s=round(time.monotonic() - started, 4),
    )
