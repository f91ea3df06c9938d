"""Per-run temporary working directories."""

from __future__ import annotations

import os
import shutil
import tempfile


def make_workdir(root: str | None, uid: int | None) -> str:
    """Create a fresh private directory, owned by ``uid`` when one is given."""
    path = tempfile.mkdtemp(prefix="rlserve-sandbox-", dir=root)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def remove_workdir(path: str) -> None:
    """Delete a work directory, even one whose snippet removed its own permissions."""
    if os.geteuid() != 0:
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                try:
                    os.chmod(os.path.join(dirpath, name), 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)
