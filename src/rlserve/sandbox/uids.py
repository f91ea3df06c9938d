"""Process-wide bookkeeping of the uids sandboxes run code as.

After each run the sandbox kills every process of the slot's uid, so two live sandboxes
sharing a uid would kill each other's snippets. Sandboxes in *other* processes cannot be seen
from here: give each server process its own ``uid_base``.
"""

from __future__ import annotations

import threading

_claimed: set[int] = set()
_lock = threading.Lock()


def claim_uids(uids: range) -> None:
    """Reserve ``uids`` for one sandbox; ValueError if another live sandbox holds any."""
    with _lock:
        clash = _claimed.intersection(uids)
        if clash:
            raise ValueError(
                f"uids {min(clash)}..{max(clash)} are used by another live Sandbox in this "
                "process; close it or choose a different uid_base"
            )
        _claimed.update(uids)


def release_uids(uids: range) -> None:
    """Give back uids reserved with :func:`claim_uids`."""
    with _lock:
        _claimed.difference_update(uids)
