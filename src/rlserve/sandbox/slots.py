"""A fixed pool of numbered slots: a concurrency limit that also hands out slot indices."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SlotPool:
    """At most ``size`` holders at a time; each holder gets a distinct index in [0, size)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"slot pool size must be >= 1, got {size}")
        self.size = size
        self._free = list(range(size))
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self.size - len(self._free)

    @contextmanager
    def slot(self) -> Iterator[int]:
        """Block until a slot is free and hold it for the duration of the ``with`` block."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._free))
            index = self._free.pop(0)
        try:
            yield index
        finally:
            with self._cond:
                self._free.append(index)
                self._cond.notify()
