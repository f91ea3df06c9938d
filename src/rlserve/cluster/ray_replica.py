"""The Ray replica: an actor that builds an Engine and serves rlserve's app from a thread.

Each actor is its own process with its own engine. uvicorn runs on a free port of the
actor's node in a background thread, so the actor's methods (`info`, `url`) answer while
it serves. Ray restarts a dead actor (`max_restarts=-1`): `__init__` runs again, on a new
port, with a new `incarnation`, which is how the `ReplicaSet` notices the restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from rlserve.cluster.config import ClusterConfig

START_WAIT_S = 60.0


class ReplicaServer:
    """The actor's body (a plain class, wrapped by `ray.remote` in `start_actor`)."""

    def __init__(
        self,
        model: str | None,
        engine_options: dict[str, Any],
        server_options: dict[str, Any],
        num_threads: int,
        local: bool,
    ) -> None:
        import torch
        import uvicorn

        from rlserve.engine import Engine
        from rlserve.server import ServerConfig, create_app

        torch.set_num_threads(max(1, num_threads))
        engine = Engine(model, **engine_options)
        config = ServerConfig(model=model, **server_options)
        host = "127.0.0.1" if local else "0.0.0.0"
        self._server = uvicorn.Server(
            uvicorn.Config(create_app(engine, config), host=host, port=0, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_WAIT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the replica's HTTP server did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self._url = f"http://{advertised_host(local)}:{port}"
        self._incarnation = uuid.uuid4().hex

    def url(self) -> str:
        """The replica's base URL (http://host:port)."""
        return self._url

    def info(self) -> dict[str, str]:
        """`url` and `incarnation` (new on every (re)start of the actor)."""
        return {"url": self._url, "incarnation": self._incarnation}

    def stop(self) -> None:
        """Stop serving (drains nothing: the ReplicaSet kills the actor next)."""
        self._server.should_exit = True
        self._thread.join(timeout=10)


def advertised_host(local: bool) -> str:
    if local:
        return "127.0.0.1"
    import ray

    return ray.util.get_node_ip_address()


def start_actor(config: ClusterConfig, local: bool) -> Any:
    """A Ray actor handle serving one replica of `config` (not waited for)."""
    import ray

    server_options = {
        "api_key": config.api_key,
        "admin_key": config.admin_key,
        **config.server_options,
    }
    engine_options = dict(config.engine_options)
    # What `rlserve serve` derives from its server flags (server/cli.py: engine_options).
    for server_field, engine_field in (("max_batch", "max_num_seqs"), ("trust_remote_code",) * 2):
        if server_field in server_options:
            engine_options.setdefault(engine_field, server_options[server_field])
    actor_class = ray.remote(ReplicaServer).options(
        num_cpus=config.num_cpus_per_replica,
        num_gpus=config.num_gpus_per_replica,
        max_restarts=-1,
        max_task_retries=0,
    )
    threads = max(1, int(config.num_cpus_per_replica))
    return actor_class.remote(config.model, engine_options, server_options, threads, local)
