"""The isolation plan in effect: which interpreter runs snippets and how it is wrapped."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

# util-linux `unshare` argument sets, strongest first. Inside the new user namespace the
# snippet keeps its (unprivileged) uid, so it has no capabilities even there; the network
# namespace has only a loopback device that is down; the pid namespace dies with its first
# process (the interpreter), taking every descendant with it.
UNSHARE_VARIANTS: tuple[tuple[str, ...], ...] = (
    ("--user", "--map-current-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--user", "--map-current-user", "--net", "--pid", "--fork", "--kill-child"),
    ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"),
)

# The first process of a pid namespace ignores every signal it has no handler for (even
# SIGXCPU from RLIMIT_CPU, or a snippet's own os.abort()), so the interpreter must not be it:
# a shell takes that place and reports the interpreter's status (128 + N for signal N).
SHELL_INIT = ("/bin/sh", "-c", '"$@"; exit $?', "sh")


@dataclass(frozen=True)
class IsolationPlan:
    """How every child is launched: ``[*wrapper, python, ...]``, optionally as a sandbox uid."""

    level: str
    python: str
    wrapper: tuple[str, ...] = ()
    drop_uid: bool = False

    @property
    def uses_namespaces(self) -> bool:
        return bool(self.wrapper)

    @property
    def shell_init(self) -> bool:
        return self.wrapper[-len(SHELL_INIT) :] == SHELL_INIT

    def exit_code(self, returncode: int | None) -> int | None:
        """The interpreter's exit status in Popen's convention (-N: killed by signal N)."""
        if returncode is not None and self.shell_init and returncode > 128:
            return 128 - returncode
        return returncode

    def expected_uid(self, uid: int | None) -> int:
        """The uid a snippet should observe under this plan."""
        if "--map-root-user" in self.wrapper:
            return 0
        return uid if uid is not None else os.getuid()


def accessible_to_others(path: str) -> bool:
    """Whether an unprivileged uid can execute ``path``: every directory on the way must be
    searchable by "others" and the file itself readable and executable by them."""
    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return False
    if not (mode & stat.S_IROTH and mode & stat.S_IXOTH):
        return False
    parent = os.path.dirname(real)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if parent == os.path.dirname(parent):
            return True
        parent = os.path.dirname(parent)
