"""Sandbox configuration and the result of one sandboxed execution."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rlserve._checks import check_int, check_number, check_positive_int

# Strongest first. "auto" picks the strongest level that works on this machine.
ISOLATION_LEVELS = (
    "namespaces+uid+rlimits",
    "namespaces+rlimits",
    "uid+rlimits",
    "rlimits",
)
ISOLATION_CHOICES = ("auto", *ISOLATION_LEVELS)

STATUSES = ("completed", "error", "timeout", "memory", "output_limit", "sandbox_error")

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation settings for :class:`rlserve.sandbox.Sandbox`.

    The interpreter runs with ``-I -S -B -u``: isolated mode (no environment variables, no
    user site, script directory not on ``sys.path``), *no site-packages* (snippets get the
    standard library only, which keeps start-up fast and the attack surface small; set
    ``site_packages=True`` to allow third-party imports), no ``.pyc`` writes, and unbuffered
    output so that text printed before a timeout is still captured.

    Isolation levels, strongest first: ``namespaces+uid+rlimits`` (root only: a dedicated uid
    per run slot, so RLIMIT_NPROC is enforced and files outside the work dir are protected,
    plus user/network/pid/mount namespaces via util-linux ``unshare``), ``namespaces+rlimits``
    (non-root), ``uid+rlimits`` and ``rlimits``. Note that plain ``rlimits`` as root keeps root
    privileges: no process-count limit, no file-system protection.

    As root a sandbox leases ``max_concurrency + max_sessions`` uids from the pool
    ``uid_base .. uid_base + uid_pool_size - 1`` through lock files in ``uid_lock_dir``
    (default ``/run/rlserve-sandbox-uids``), so sandboxes in any number of processes, the
    ``rlserve sandbox`` service included, get disjoint uids and never kill each other's runs.
    Uids with a passwd or group entry are skipped; the rest of the pool must not be used by
    anything else: the sandbox kills every process of a uid it holds after each run.
    """

    timeout_s: float = 10.0  # default wall-clock limit per execution
    max_timeout_s: float = 300.0  # largest timeout a caller may ask for
    cpu_time_s: float | None = None  # RLIMIT_CPU per process; None: the timeout + 1 s
    session_cpu_time_s: float = 600.0  # RLIMIT_CPU of a persistent session interpreter
    memory_bytes: int = 1 * GIB  # RLIMIT_AS
    max_file_bytes: int = 16 * MIB  # RLIMIT_FSIZE
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_processes: int = 32  # RLIMIT_NPROC (processes and threads of the sandbox uid)
    max_output_bytes: int = 64 * 1024  # per stream; the run is killed once exceeded
    max_code_chars: int = 1_000_000
    max_concurrency: int = 4
    max_sessions: int = 8
    isolation: str = "auto"
    uid_base: int = 61000  # when root: first uid of the pool sandbox uids are leased from
    uid_pool_size: int = 4000  # uids in the pool, shared by every sandbox on the machine
    uid_lock_dir: str | None = None  # None: /run/rlserve-sandbox-uids (or under the temp dir)
    python: str | None = None  # interpreter for snippets; None picks one the sandbox can run
    site_packages: bool = False
    workdir_root: str | None = None  # parent of the per-run temporary directories
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("timeout_s", "max_timeout_s", "session_cpu_time_s"):
            check_number(name, getattr(self, name), finite=True, positive=True)
        if self.cpu_time_s is not None:
            check_number("cpu_time_s", self.cpu_time_s, finite=True, positive=True)
        for name in (
            "memory_bytes",
            "max_file_bytes",
            "max_open_files",
            "max_processes",
            "max_output_bytes",
            "max_code_chars",
            "max_concurrency",
            "max_sessions",
            "uid_pool_size",
        ):
            check_positive_int(name, getattr(self, name))
        if self.timeout_s > self.max_timeout_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must not exceed max_timeout_s ({self.max_timeout_s})"
            )
        if self.isolation not in ISOLATION_CHOICES:
            choices = ", ".join(ISOLATION_CHOICES)
            raise ValueError(f"unknown isolation {self.isolation!r}; choose one of {choices}")
        check_int("uid_base", self.uid_base)
        if not 1000 <= self.uid_base <= 2**31 - 1 - self.uid_pool_size:
            raise ValueError(
                f"uid_base must be >= 1000 and leave room for uid_pool_size "
                f"({self.uid_pool_size}) uids below 2**31, got {self.uid_base}"
            )
        if self.uid_pool_size < self.uid_count:
            raise ValueError(
                f"uid_pool_size ({self.uid_pool_size}) must be at least max_concurrency + "
                f"max_sessions ({self.uid_count})"
            )
        if self.uid_lock_dir is not None and (
            not isinstance(self.uid_lock_dir, str) or not self.uid_lock_dir.startswith("/")
        ):
            raise ValueError(f"uid_lock_dir must be an absolute path, got {self.uid_lock_dir!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.extra_env.items()):
            raise ValueError("extra_env must map strings to strings")

    @property
    def uid_count(self) -> int:
        """How many uids a sandbox leases when it runs as root (run slots + sessions)."""
        return self.max_concurrency + self.max_sessions

    def check_timeout(self, timeout: float | None) -> float:
        """Validate a per-call timeout, returning the effective value."""
        if timeout is None:
            return self.timeout_s
        check_number("timeout", timeout, finite=True, positive=True)
        if timeout > self.max_timeout_s:
            raise ValueError(f"timeout {timeout} exceeds max_timeout_s ({self.max_timeout_s})")
        return float(timeout)


@dataclass
class SandboxResult:
    """The outcome of one execution.

    ``status`` is one of ``completed`` (exit 0), ``error`` (non-zero exit, exception or
    syntax error), ``timeout`` (wall-clock or CPU limit), ``memory`` (MemoryError or the
    address-space limit), ``output_limit`` (stdout or stderr over the cap; the run was killed)
    and ``sandbox_error`` (the sandbox itself failed, or the run was killed from outside
    the sandbox: an infrastructure error, not the code's). A run killed by a SIGKILL that
    none of the limits sent is run again to tell that from code that kills itself: if the
    rerun dies the same way it is an ``error``. A session cannot be rerun, so such a kill
    of its interpreter is an ``error`` too. ``state_lost`` is set on session calls
    whose interpreter state is gone: the call that killed it, and the first call served by the
    fresh interpreter.
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    exit_code: int | None = None
    duration_s: float = 0.0
    state_lost: bool = False
    session_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of all fields."""
        return asdict(self)
