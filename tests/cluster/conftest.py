"""Session fixtures of the cluster tests: one local Ray (2 CPUs) with two Ray replicas of
the bundled model (`ray_replicas`), and two plain `rlserve serve` processes
(`rlserve_servers`) for remote replicas. Both are started once per test session; a test
that breaks a replica must bring it back (`wait_healthy`) before it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.servers import TEST_MODEL, free_port, wait_until

ray = pytest.importorskip("ray")

from rlserve.cluster import ClusterConfig  # noqa: E402
from rlserve.cluster.replica_set import ReplicaSet  # noqa: E402
from rlserve.cluster.run_sync import run_sync  # noqa: E402

RAY_CPUS = 2
# Small engines: two replicas plus two plain servers share the test machine.
REPLICA_ENGINE = {"num_blocks": 128, "max_num_seqs": 16}
REPLICA_SERVER = {"max_tokens": 64, "flush_interval_ms": 5.0}
HEALTHY_TIMEOUT_S = 120.0


@dataclass
class PlainServer:
    """One `rlserve serve` subprocess (its own --weights-dir)."""

    url: str
    weights_dir: Path
    proc: subprocess.Popen


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Local Ray with 2 CPUs for the whole session (started here unless already up)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=RAY_CPUS, include_dashboard=False, logging_level="warning")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_weights_dir(tmp_path_factory) -> Path:
    """The --weights-dir of both Ray replicas (one filesystem: they run on this machine)."""
    return tmp_path_factory.mktemp("ray-weights")


@pytest.fixture(scope="session")
def ray_replicas(spawned_servers, ray_session, ray_weights_dir) -> Iterator[ReplicaSet]:
    """A started ReplicaSet of 2 Ray replicas of the bundled model (1 CPU each). The plain
    servers are spawned first so that they boot while Ray starts."""
    config = ClusterConfig(
        model=TEST_MODEL,
        num_replicas=2,
        num_cpus_per_replica=1.0,
        engine_options=dict(REPLICA_ENGINE),
        server_options={**REPLICA_SERVER, "weights_dir": str(ray_weights_dir)},
        health_interval_s=0.5,
    )
    replicas = ReplicaSet(config)
    replicas.start()
    yield replicas
    replicas.close()


@pytest.fixture(scope="session")
def rlserve_servers(spawned_servers) -> list[PlainServer]:
    """Two `rlserve serve` processes on loopback, each with its own --weights-dir, up."""
    for server in spawned_servers:
        up = wait_until(lambda s=server: _healthy(s.url) or s.proc.poll() is not None, 120)
        assert up and server.proc.poll() is None, _log_tail(server)
    return spawned_servers


@pytest.fixture(scope="session")
def spawned_servers(tmp_path_factory) -> Iterator[list[PlainServer]]:
    """The two `rlserve serve` processes, started (not yet waited for); killed at the end."""
    servers = [_spawn(tmp_path_factory.mktemp(f"plain-weights-{i}")) for i in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.proc.kill()
            server.proc.wait(30)


@pytest.fixture
def wait_healthy() -> Callable[[ReplicaSet], None]:
    """`wait_healthy(rs)`: health rounds until every replica of `rs` is routable again."""

    def wait(replicas: ReplicaSet) -> None:
        run_sync(_until_healthy(replicas))

    return wait


async def _until_healthy(replicas: ReplicaSet) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    async with httpx.AsyncClient() as client:
        while True:
            await replicas.check_health(client)
            if len(replicas.routable()) == len(replicas.replicas):
                return
            if time.monotonic() > deadline:
                rows = [r.describe() for r in replicas.replicas]
                raise AssertionError(f"replicas not healthy again: {rows}")
            await asyncio.sleep(0.1)


def _spawn(weights_dir: Path) -> PlainServer:
    port = free_port()
    argv = [sys.executable, "-m", "rlserve.cli", "serve", "--port", str(port)]
    argv += ["--weights-dir", str(weights_dir), "--max-tokens", "64", "--max-batch", "16"]
    argv += ["--num-blocks", "128"] + (["--model", TEST_MODEL] if TEST_MODEL else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (weights_dir / "server.log").open("w")  # a file, not a pipe: a full pipe blocks
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return PlainServer(f"http://127.0.0.1:{port}", weights_dir, proc)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _log_tail(server: PlainServer) -> str:
    return (server.weights_dir / "server.log").read_text()[-3000:]
