"""`ReplicaSet`: the replicas of a cluster (Ray actors and external URLs), their health,
and the committed weights/adapters a replica that comes back is brought up to."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx

from rlserve.cluster.committed import CommittedState
from rlserve.cluster.config import ClusterConfig
from rlserve.cluster.probes import PROBE_TIMEOUT_S, admin_headers, is_healthy, probe_dialect
from rlserve.cluster.replay import replay_if_behind
from rlserve.cluster.replica import Replica
from rlserve.cluster.run_sync import run_sync

START_POLL_S = 0.1


class ReplicaSet:
    """The replicas of `config`: `num_replicas` Ray actors ("ray-0", ...) then one remote
    replica per backend URL ("remote-0", ...). Nothing starts before `start()`.

    A replica is routable once a health probe passed; one that fails a probe, or that the
    router reports (`mark_unhealthy`), leaves routing until a later probe passes. A Ray
    actor that died is restarted by Ray; the next probe reads its new URL and replays the
    committed weight update and adapters on it before it is routable again.
    """

    def __init__(self, config: ClusterConfig) -> None:
        if not isinstance(config, ClusterConfig):
            raise TypeError(f"config must be a ClusterConfig, got {type(config).__name__}")
        self.config = config
        self.committed = CommittedState()
        self.admin_headers = admin_headers(config.admin_key, config.api_key)
        rays = [Replica(f"ray-{i}", "ray", "rlserve") for i in range(config.num_replicas)]
        remotes = [
            Replica(f"remote-{i}", "remote", "rlserve", url=url)
            for i, url in enumerate(config.backend_urls)
        ]
        self._replicas = rays + remotes
        self._actors: dict[str, Any] = {}
        self._incarnations: dict[str, str] = {}
        self._pending: dict[str, Any] = {}  # replica name -> Ray ref of an unanswered info()
        self._stale: set[str] = set()  # restarted: must be replayed before routing
        self._checking: set[str] = set()
        self._checking_lock = threading.Lock()
        self._owns_ray = False
        self._started = False

    @property
    def replicas(self) -> list[Replica]:
        """Every replica, routable or not, in name order (Ray first)."""
        return list(self._replicas)

    def routable(self) -> list[Replica]:
        """The replicas requests may go to now: healthy and with a URL."""
        return [r for r in self._replicas if r.routable]

    def replica(self, name: str) -> Replica:
        """The replica called `name` (KeyError naming the known ones)."""
        for replica in self._replicas:
            if replica.name == name:
                return replica
        raise KeyError(f"no replica {name!r}; replicas: {[r.name for r in self._replicas]}")

    def start(self) -> None:
        """Start Ray (locally unless `ray_address`) and the actors, probe the remote
        replicas' dialects, and wait until every replica is healthy (TimeoutError naming
        the ones that are not, after `start_timeout_s`; the set is closed then)."""
        if self._started:
            return
        self._started = True
        try:
            if self.config.num_replicas:
                self._start_actors()
            run_sync(self._wait_ready())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill the actors (for good), and shut Ray down if this set started it."""
        if self._actors:
            import ray

            for actor in self._actors.values():
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # already gone
                    pass
            self._actors.clear()
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False
        for replica in self._replicas:
            replica.healthy = False

    def mark_unhealthy(self, replica: Replica, error: str) -> None:
        """Take `replica` out of routing (a connection error, a 5xx): a later health probe
        brings it back."""
        replica.healthy = False
        replica.last_error = error

    def kill(self, name: str) -> None:
        """Kill Ray replica `name`'s process; Ray restarts it (for tests and chaos drills)."""
        import ray

        replica = self.replica(name)
        if replica.kind != "ray":
            raise ValueError(f"replica {name!r} is {replica.kind}, not a Ray replica")
        self.mark_unhealthy(replica, "killed")
        replica.url = None
        ray.kill(self._actors[name], no_restart=False)

    async def check_health(self, client: httpx.AsyncClient) -> None:
        """One health round over every replica, concurrently (see the class docstring)."""
        await asyncio.gather(*(self._check(replica, client) for replica in self._replicas))

    async def _check(self, replica: Replica, client: httpx.AsyncClient) -> None:
        # Health rounds may overlap (the router's loop, a Cluster's, a test's): one probe
        # per replica at a time, so that a replay never runs twice at once.
        with self._checking_lock:
            if replica.name in self._checking:
                return
            self._checking.add(replica.name)
        try:
            await self._probe(replica, client)
        finally:
            with self._checking_lock:
                self._checking.discard(replica.name)

    async def _probe(self, replica: Replica, client: httpx.AsyncClient) -> None:
        if replica.kind == "ray" and not await self._refresh_actor(replica):
            return
        assert replica.url is not None
        ok, why = await is_healthy(client, replica.url)
        if not ok:
            replica.healthy = False
            replica.last_error = why
            return
        if replica.healthy:
            return
        stale = replica.name in self._stale
        why = await replay_if_behind(self, replica, client, force=stale)
        if why is not None:
            replica.last_error = why
            return
        self._stale.discard(replica.name)
        replica.healthy = True

    async def _refresh_actor(self, replica: Replica) -> bool:
        """Read the actor's URL and incarnation; False while it (re)starts."""
        info, error = await self._actor_info(replica.name)
        if info is None:
            replica.healthy = False
            replica.url = None
            replica.last_error = error or replica.last_error
            return False
        known = self._incarnations.get(replica.name)
        if info["incarnation"] != known:
            if known is not None:
                replica.restarts += 1
                self._stale.add(replica.name)
            self._incarnations[replica.name] = info["incarnation"]
            replica.url = info["url"]
            replica.healthy = False
        return True

    async def _actor_info(self, name: str) -> tuple[dict[str, str] | None, str | None]:
        """(info, None), or (None, why) while the actor is not answering."""
        ref = self._pending.get(name)
        if ref is None:
            ref = self._pending[name] = self._actors[name].info.remote()
        try:
            info = await asyncio.wait_for(asyncio.wrap_future(ref.future()), PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return None, None  # still starting: the same call is awaited next round
        except Exception as exc:  # the actor died under the call: ask again next round
            self._pending.pop(name, None)
            return None, f"{type(exc).__name__}: {str(exc)[:500]}"
        self._pending.pop(name, None)
        return info, None

    def _start_actors(self) -> None:
        import ray

        from rlserve.cluster.ray_replica import start_actor

        if not ray.is_initialized():
            ray.init(address=self.config.ray_address, include_dashboard=False)
            self._owns_ray = True
        local = self.config.ray_address is None
        for replica in self._replicas[: self.config.num_replicas]:
            self._actors[replica.name] = start_actor(self.config, local)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        async with httpx.AsyncClient() as client:
            for replica in self._replicas:
                if replica.kind == "remote":
                    assert replica.url is not None
                    replica.dialect = await probe_dialect(client, replica.url)
            while True:
                await self.check_health(client)
                waiting = [r for r in self._replicas if not r.routable]
                if not waiting:
                    return
                if time.monotonic() > deadline:
                    names = {r.name: r.last_error or "not started" for r in waiting}
                    raise TimeoutError(f"replicas not healthy after start_timeout_s: {names}")
                await asyncio.sleep(START_POLL_S)
