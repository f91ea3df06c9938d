"""Freeze inference while weights sync, so no request runs on half-updated weights.

A trainer process owns one `WeightSyncController`; around each push of new weights it
calls `with controller.syncing(model_tag): ...` (or `begin_sync` / `end_sync`). Clients
created with `weight_sync=controller, freeze_for_weight_sync=True` call
`wait_for_weight_sync(model_tag)` before every request, so calls made during a sync wait
for it to finish and then run on the new version.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WeightSyncController:
    """Per-model-tag sync state shared by a trainer and its inference clients (threads)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._syncing: dict[str, int] = {}  # tag -> nested syncs in progress
        self._versions: dict[str, int | None] = {}

    def begin_sync(self, model_tag: str = "default") -> None:
        with self._cond:
            self._syncing[model_tag] = self._syncing.get(model_tag, 0) + 1

    def end_sync(self, model_tag: str = "default", version: int | None = None) -> None:
        with self._cond:
            if not self._syncing.get(model_tag):
                raise ValueError(f"no weight sync in progress for model tag {model_tag!r}")
            self._syncing[model_tag] -= 1
            if version is not None:
                self._versions[model_tag] = version
            self._cond.notify_all()

    @contextmanager
    def syncing(self, model_tag: str = "default") -> Iterator[None]:
        """Mark a sync for the duration of the block (ended even if it raises)."""
        self.begin_sync(model_tag)
        try:
            yield
        finally:
            self.end_sync(model_tag)

    def is_syncing(self, model_tag: str = "default") -> bool:
        with self._cond:
            return bool(self._syncing.get(model_tag))

    def version(self, model_tag: str = "default") -> int | None:
        """The policy version recorded by the last `end_sync(..., version=...)`."""
        with self._cond:
            return self._versions.get(model_tag)

    def wait_for_weight_sync(
        self, model_tag: str = "default", timeout: float | None = None
    ) -> bool:
        """Block while a sync of `model_tag` is in progress; False if `timeout` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._syncing.get(model_tag), timeout)

    async def await_weight_sync(
        self, model_tag: str = "default", timeout: float | None = None
    ) -> bool:
        """`wait_for_weight_sync` without blocking the event loop."""
        if not self.is_syncing(model_tag):
            return True
        return await asyncio.to_thread(self.wait_for_weight_sync, model_tag, timeout)
