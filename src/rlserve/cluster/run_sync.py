"""Run a coroutine to completion from sync code, also where an event loop already runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, in a helper thread when this thread is inside a running loop
    (e.g. `ReplicaSet.start()` called from an async app's startup)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="rlserve-run-sync")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
