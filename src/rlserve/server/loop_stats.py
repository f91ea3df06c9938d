"""What handlers may read of the engine: a snapshot the engine thread publishes.

The engine is not thread-safe, so handlers never read it; after every step (and every
call) the engine thread replaces one dict, which any thread may read.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rlserve.engine import memory

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

RATE_WINDOW_S = 5.0  # generated tokens/s is averaged over about this long


class PublishedStats:
    """The engine's counters, pause mode and adapter names, plus tokens/s."""

    def __init__(self, engine: EngineCore) -> None:
        self.engine = engine
        self._token_samples: deque[tuple[float, int]] = deque()
        self.latest: dict[str, Any] = {**self._engine_state(), "tokens_per_second": 0.0}

    def publish(self) -> dict[str, Any]:
        """Engine thread: read the engine now; returns (and publishes) the new snapshot."""
        stats = self._engine_state()
        now = time.monotonic()
        samples = self._token_samples
        samples.append((now, int(stats.get("generated_tokens", 0))))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        span = now - samples[0][0]
        rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else 0.0
        self.latest = {**stats, "tokens_per_second": rate}
        return self.latest

    def _engine_state(self) -> dict[str, Any]:
        engine = self.engine
        return {
            **engine.stats(),
            "paused": engine.paused,
            "adapters": sorted(engine.adapters),
            "memory_released": list(memory.released_tags(engine)),
        }
