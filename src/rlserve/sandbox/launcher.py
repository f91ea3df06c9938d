"""Start sandbox children under an isolation plan and clean up after them."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from rlserve.sandbox.config import SandboxConfig
from rlserve.sandbox.limits import ChildLimits, make_preexec
from rlserve.sandbox.plan import IsolationPlan
from rlserve.sandbox.process import collect, kill_children_first, kill_group, kill_uid

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Launcher:
    """Builds the command line, environment and pre-exec hook of every sandbox child.

    ``uids`` are the sandbox uids this process holds (see :mod:`rlserve.sandbox.uids`):
    slot ``i`` runs as ``uids[i]`` when the plan drops privileges.
    """

    def __init__(
        self, config: SandboxConfig, plan: IsolationPlan, uids: Sequence[int] = ()
    ) -> None:
        self.config = config
        self.plan = plan
        self.uids = tuple(uids)

    def python_argv(self) -> list[str]:
        flags = ["-I", "-B", "-u"] if self.config.site_packages else ["-I", "-S", "-B", "-u"]
        return [self.plan.python, *flags]

    def env(self, workdir: str) -> dict[str, str]:
        env = {
            "PATH": BASE_PATH,
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # -I makes the interpreter ignore PYTHON* variables; these reach subprocesses.
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.config.extra_env)
        return env

    def uid_for(self, index: int) -> int | None:
        """The dedicated uid of run slot / session slot ``index``, or None without uid drop."""
        return self.uids[index] if self.plan.drop_uid else None

    def spawn(
        self,
        args: Sequence[str],
        *,
        workdir: str,
        uid: int | None,
        cpu_s: float,
        stdin: int | None = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        """Start ``python <flags> *args`` in ``workdir`` with limits applied before exec."""
        cfg = self.config
        limits = ChildLimits(
            cpu_s=cpu_s,
            memory_bytes=cfg.memory_bytes,
            file_bytes=cfg.max_file_bytes,
            open_files=cfg.max_open_files,
            processes=cfg.max_processes,
            uid=uid,
        )
        return subprocess.Popen(
            [*self.plan.wrapper, *self.python_argv(), *args],
            cwd=workdir,
            env=self.env(workdir),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=make_preexec(limits),
        )

    def reap(self, proc: subprocess.Popen[bytes], uid: int | None) -> float | None:
        """Kill the child's process group (and, with a dedicated uid, every process of that
        uid), then collect the exit status and close the pipes. Returns the CPU seconds the
        child used (see :func:`rlserve.sandbox.process.collect`)."""
        if "--fork" in self.plan.wrapper:
            kill_children_first(proc)
        kill_group(proc)
        if uid is not None and self.plan.drop_uid:
            kill_uid(uid)
        cpu_s = collect(proc, timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return cpu_s
