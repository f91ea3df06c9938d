"""The `Cluster` API's background event loop: the health loop, and the admin fan-outs
run on it from the caller's thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

if TYPE_CHECKING:
    from rlserve.cluster.replica_set import ReplicaSet

T = TypeVar("T")
CLOSE_WAIT_S = 30.0


class ControlLoop:
    """An asyncio loop in a daemon thread with one `httpx.AsyncClient`, probing `rs`
    every `health_interval_s` until `close()`."""

    def __init__(self, rs: ReplicaSet) -> None:
        self._rs = rs
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._client: httpx.AsyncClient | None = None
        self._health: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="rlserve-cluster", daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None
        return self._client

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def check_now(self) -> None:
        """One health round now (e.g. after a request saw a replica fail)."""
        self.run(self._rs.check_health(self.client))

    def close(self) -> None:
        """Stop the health loop, close the HTTP client and the loop; idempotent."""
        if not self._thread.is_alive():
            return
        self.run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_WAIT_S)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._client = httpx.AsyncClient()
        self._health = self._loop.create_task(self._health_loop())
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()
        self._loop.close()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._rs.config.health_interval_s)
            with contextlib.suppress(Exception):  # one failed round must not end the loop
                await self._rs.check_health(self.client)

    async def _shutdown(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        await self.client.aclose()
