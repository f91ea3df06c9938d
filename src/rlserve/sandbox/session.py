"""One persistent sandboxed interpreter that keeps its globals between calls."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

from rlserve.sandbox.classify import classify, classify_ending
from rlserve.sandbox.config import SandboxResult
from rlserve.sandbox.launcher import Launcher
from rlserve.sandbox.limits import cpu_soft_limit
from rlserve.sandbox.process import StreamCapture, drain, has_exited, pump, wait_exited
from rlserve.sandbox.workdir import make_workdir, remove_workdir

REPL_SOURCE = (Path(__file__).with_name("_repl.py")).read_text(encoding="utf-8")
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 4096
EXIT_WAIT_S = 1.0  # after its pipes close, how long an interpreter gets to exit by itself


class FrameReader:
    """Collects the result frame the REPL writes after each block."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.frame: dict[str, object] | None = None
        self.error: str | None = None

    @property
    def overflow(self) -> bool:  # a corrupt channel ends the read loop like an output cap
        return self.error is not None

    @property
    def finished(self) -> bool:
        return self.frame is not None or self.error is not None

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) < HEADER.size:
            return
        (size,) = HEADER.unpack_from(self.buffer)
        if size > MAX_FRAME_BYTES:
            self.error = "corrupt result channel"
        elif len(self.buffer) >= HEADER.size + size:
            try:
                frame = json.loads(self.buffer[HEADER.size : HEADER.size + size])
                self.frame = frame if isinstance(frame, dict) else None
            except ValueError:
                self.frame = None
            if self.frame is None:
                self.error = "corrupt result channel"


class Session:
    """A REPL child (started lazily) with per-call timeouts and output caps.

    After anything that kills the interpreter (timeout, output cap, crash) the next call starts
    a fresh one; both that failing call and the next one report ``state_lost=True``.
    """

    def __init__(self, launcher: Launcher, session_id: str, uid: int | None) -> None:
        self.launcher = launcher
        self.session_id = session_id
        self.uid = uid
        self.lock = threading.Lock()
        self.closed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._result_fd: int | None = None
        self._workdir: str | None = None
        self._lost = False  # a previous interpreter died; tell the next caller

    def execute(self, code: str, timeout: float) -> SandboxResult:
        """Run ``code`` in this session; the caller holds :attr:`lock`."""
        started = time.monotonic()
        try:
            if self._proc is not None and has_exited(self._proc):
                self._stop(lost=True)
            state_lost = self._lost
            if self._proc is None:
                self._start()
            result = self._round_trip(code, started + timeout)
        except OSError as exc:
            self._stop(lost=True)
            result = SandboxResult("sandbox_error", stderr=f"session failure: {exc}")
            state_lost = True
        result.state_lost = result.state_lost or state_lost
        result.session_id = self.session_id
        result.duration_s = round(time.monotonic() - started, 4)
        if not result.state_lost:
            self._lost = False
        return result

    def close(self) -> None:
        """Kill the interpreter and delete its work directory."""
        self.closed = True
        self._stop(lost=False)

    def _start(self) -> None:
        cfg = self.launcher.config
        self._workdir = make_workdir(cfg.workdir_root, self.uid)
        read_fd, write_fd = os.pipe()
        try:
            self._proc = self.launcher.spawn(
                ["-c", REPL_SOURCE, str(write_fd)],
                workdir=self._workdir,
                uid=self.uid,
                cpu_s=cfg.session_cpu_time_s,
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._result_fd = read_fd
        self._lost = False

    def _stop(self, *, lost: bool) -> float | None:
        """Kill the interpreter; the CPU seconds it used (None: unknown or none running)."""
        cpu_used_s = None
        if self._proc is not None:
            cpu_used_s = self.launcher.reap(self._proc, self.uid)
            self._proc = None
        if self._result_fd is not None:
            os.close(self._result_fd)
            self._result_fd = None
        if self._workdir is not None:
            remove_workdir(self._workdir)
            self._workdir = None
        self._lost = self._lost or lost
        return cpu_used_s

    def _round_trip(self, code: str, deadline: float) -> SandboxResult:
        proc, result_fd = self._proc, self._result_fd
        assert proc is not None and proc.stdin and proc.stdout and proc.stderr
        assert result_fd is not None
        payload = code.encode("utf-8")
        proc.stdin.write(HEADER.pack(len(payload)) + payload)
        proc.stdin.flush()
        cap = self.launcher.config.max_output_bytes
        out, err, frames = StreamCapture(cap), StreamCapture(cap), FrameReader()
        pipes = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        reason = pump({**pipes, result_fd: frames}, proc, deadline, until=lambda: frames.finished)
        if reason == "done" and frames.frame is not None:
            drain(pipes)
        return self._finish(reason, frames, out, err)

    def _finish(
        self, reason: str, frames: FrameReader, out: StreamCapture, err: StreamCapture
    ) -> SandboxResult:
        truncated = out.overflow or err.overflow
        frame = frames.frame if reason == "done" and not truncated else None
        if frame is not None:
            code = frame.get("exit_code")
            exit_code = code if isinstance(code, int) else 1
            stderr = err.text()
            status = classify("eof", exit_code, stderr)
            return SandboxResult(status, out.text(), stderr, exit_code=exit_code)
        # The interpreter is gone (crashed, CPU limit) or must go (timeout, output cap).
        proc = self._proc
        # Only an interpreter that died before the sandbox killed it can have been killed
        # from outside (one that closed its pipes and kept running is killed below).
        died_first = (
            proc is not None
            and reason in ("eof", "exited")
            and wait_exited(proc, time.monotonic() + EXIT_WAIT_S)
        )
        cpu_used_s = self._stop(lost=True)
        returncode = self.launcher.plan.exit_code(proc.returncode if proc is not None else None)
        stderr = err.text()
        if frames.error is not None and not truncated:
            stderr += f"\n[sandbox: {frames.error}; session restarted]\n"
            return SandboxResult("sandbox_error", out.text(), stderr, state_lost=True)
        if truncated:
            reason = "overflow"
        elif reason not in ("deadline", "overflow"):
            reason = "eof" if died_first else "killed"
        cpu_limit_s = cpu_soft_limit(self.launcher.config.session_cpu_time_s)
        status, stderr = classify_ending(
            reason, returncode, stderr, cpu_used_s, cpu_limit_s, rerunnable=False
        )
        return SandboxResult(
            status=status,
            stdout=out.text(),
            stderr=stderr,
            truncated=truncated,
            exit_code=None if reason in ("deadline", "overflow") else returncode,
            state_lost=True,
        )
