"""An LRU cache of generations whose output is determined (greedy or seeded requests)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from rlserve._checks import check_int


class GenerationCache:
    """At most `capacity` entries (0: nothing is kept); the least recently used entry is
    dropped first. Callers put the weight version in the key, so an update never hits."""

    def __init__(self, capacity: int) -> None:
        self.capacity = check_int("cache_size", capacity, minimum=0)
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        """The entry for `key` (now the most recent) or None; counts a hit or a miss."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.capacity == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (the hit and miss counts stay)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "size": len(self),
            "capacity": self.capacity,
        }
