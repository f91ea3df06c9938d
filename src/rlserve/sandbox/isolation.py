"""Find the strongest isolation that works here by trying it once with a probe snippet."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator

from rlserve.sandbox.config import SandboxConfig
from rlserve.sandbox.launcher import Launcher
from rlserve.sandbox.plan import (
    SHELL_INIT,
    UNSHARE_VARIANTS,
    IsolationPlan,
    accessible_to_others,
)
from rlserve.sandbox.runner import run_snippet

PROBE_CODE = "import os\nprint('rlserve-probe', os.getuid())\n"
PROBE_TIMEOUT_S = 20.0
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")

_cache: dict[tuple[object, ...], IsolationPlan] = {}
_cache_lock = threading.Lock()


class IsolationUnavailable(RuntimeError):
    """No isolation level (or not the one asked for) works on this machine."""


def levels_to_try(config: SandboxConfig, is_root: bool) -> list[str]:
    """Isolation levels in the order they are attempted."""
    available = (
        ["namespaces+uid+rlimits", "uid+rlimits", "rlimits"]
        if is_root
        else ["namespaces+rlimits", "rlimits"]
    )
    if config.isolation == "auto":
        return available
    if config.isolation not in available:
        who = "root" if is_root else "a non-root user"
        raise ValueError(f"isolation {config.isolation!r} is not possible as {who}")
    return [config.isolation]


def candidate_plans(config: SandboxConfig, level: str) -> Iterator[IsolationPlan]:
    """Every (interpreter, wrapper) combination worth probing for ``level``."""
    drop_uid = "uid" in level.split("+")
    pythons = [config.python] if config.python else [sys.executable, *SYSTEM_PYTHONS]
    if drop_uid:
        # The sandbox uid cannot run an interpreter installed under a private home directory.
        pythons = [p for p in pythons if accessible_to_others(p)]
    wrappers: list[tuple[str, ...]] = [()]
    if level.startswith("namespaces"):
        unshare = shutil.which("unshare")
        wrappers = [
            (unshare, *variant, *(SHELL_INIT if "--pid" in variant else ()))
            for variant in (UNSHARE_VARIANTS if unshare else ())
        ]
    seen: set[str] = set()
    for python in pythons:
        real = os.path.realpath(python)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        for wrapper in wrappers:
            yield IsolationPlan(level=level, python=python, wrapper=wrapper, drop_uid=drop_uid)


def probe(config: SandboxConfig, plan: IsolationPlan, uid: int | None) -> str | None:
    """Run the probe snippet under ``plan`` (as ``uid``, a sandbox uid this process holds,
    when the plan drops privileges); None when it works, else the reason it failed."""
    launcher = Launcher(config, plan, () if uid is None else (uid,))
    uid = launcher.uid_for(0)
    result = run_snippet(launcher, PROBE_CODE, PROBE_TIMEOUT_S, uid)
    expected = f"rlserve-probe {plan.expected_uid(uid)}"
    if result.status == "completed" and result.stdout.strip() == expected:
        return None
    return f"{result.status}: {(result.stderr or result.stdout).strip()[-300:]}"


def detect(config: SandboxConfig, probe_uid: int | None = None) -> IsolationPlan:
    """The strongest working plan for ``config`` (probed once per process and cached).
    Plans that drop privileges are only tried with a ``probe_uid`` to run the probe as."""
    is_root = os.geteuid() == 0
    key = (config.isolation, config.python, config.site_packages, is_root)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        failures: list[str] = []
        for level in levels_to_try(config, is_root):
            for plan in candidate_plans(config, level):
                if plan.drop_uid and probe_uid is None:
                    continue
                reason = probe(config, plan, probe_uid)
                if reason is None:
                    _cache[key] = plan
                    return plan
                failures.append(f"{level} via {' '.join(plan.wrapper) or plan.python}: {reason}")
        raise IsolationUnavailable("no sandbox isolation works here:\n" + "\n".join(failures))
