"""`rlserve serve --replicas N | --backend-url URL ...`: start the replicas, serve the router.

The usual `rlserve serve` flags keep their meaning: `--host`/`--port` are the router's,
`--model`, `--api-key`/`--admin-key` the cluster's, the other server and engine flags are
passed to every Ray replica (external servers keep their own settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from rlserve.cluster.config import ROUTING_POLICIES, ClusterConfig
from rlserve.cluster.router_config import RouterConfig
from rlserve.cluster.routing_policy import POLICY_ALIASES, canonical_policy
from rlserve.config import EngineConfig
from rlserve.server.cli_flags import add_flags, values_of
from rlserve.server.config import ServerConfig

log = logging.getLogger("rlserve.router")

CLUSTER_SERVER_FIELDS = ("model", "host", "port", "api_key", "admin_key")
ROUTER_SERVER_FIELDS = ("allow_open_admin", "max_request_bytes", "max_update_bytes", "log_level")


def wants_cluster(argv: list[str]) -> bool:
    """Whether `rlserve serve` arguments ask for a cluster (`--replicas`/`--backend-url`)."""
    flags = ("--replicas", "--backend-url")
    return any(a in flags or a.split("=", 1)[0] in flags for a in argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlserve serve",
        description="Serve many replicas behind one endpoint (Ray actors and/or external "
        "OpenAI-compatible servers), with one weight version across all of them.",
    )
    group = parser.add_argument_group("cluster")
    group.add_argument("--replicas", type=int, default=0, help="Ray replicas to start")
    group.add_argument(
        "--backend-url",
        action="append",
        default=[],
        metavar="URL",
        help="an external vLLM/SGLang/rlserve server to route to (repeatable)",
    )
    group.add_argument(
        "--routing",
        default="least_outstanding",
        choices=[*ROUTING_POLICIES, *POLICY_ALIASES],
        help="least_outstanding (default), session (consistent hash on a session key), "
        "prefix (hash of the first prompt block)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="join a Ray cluster ('auto' after `ray start`, or ray://host:port); "
        "default: start Ray on this machine",
    )
    group.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per Ray replica")
    group.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per Ray replica")
    group.add_argument(
        "--request-retries",
        type=int,
        default=2,
        help="other replicas a request that has streamed nothing is tried on",
    )
    group.add_argument(
        "--health-interval", type=float, default=2.0, help="seconds between health probes"
    )
    group.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds to wait for the replicas"
    )
    add_flags(parser, ServerConfig)
    add_flags(parser, EngineConfig)
    return parser


def _changed(values: dict[str, Any], config_class: type) -> dict[str, Any]:
    """The values that differ from `config_class`'s defaults (replicas keep the rest)."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    return {k: v for k, v in values.items() if v != defaults.get(k)}


def configs_from_args(args: argparse.Namespace) -> tuple[ClusterConfig, RouterConfig]:
    """The cluster and router configs the flags describe (ValueError naming a bad one)."""
    server = values_of(args, ServerConfig)
    if server["tool_call_parser"] == "none":
        server["tool_call_parser"] = None
    engine = _changed(values_of(args, EngineConfig), EngineConfig)
    engine["max_num_seqs"] = server["max_batch"]  # as `rlserve serve` sets it
    if server["trust_remote_code"]:
        engine["trust_remote_code"] = True
    router = RouterConfig(
        host=server["host"], port=server["port"], **{k: server[k] for k in ROUTER_SERVER_FIELDS}
    )
    replica_server = {
        k: v
        for k, v in _changed(server, ServerConfig).items()
        if k not in CLUSTER_SERVER_FIELDS and k != "log_level"
    }
    cluster = ClusterConfig(
        model=server["model"],
        num_replicas=args.replicas,
        backend_urls=tuple(args.backend_url),
        ray_address=args.ray_address,
        num_cpus_per_replica=args.replica_cpus,
        num_gpus_per_replica=args.replica_gpus,
        engine_options=engine,
        server_options=replica_server,
        api_key=server["api_key"],
        admin_key=server["admin_key"],
        routing=canonical_policy(args.routing),
        health_interval_s=args.health_interval,
        request_retries=args.request_retries,
        start_timeout_s=args.start_timeout,
    )
    router.check_exposure(cluster.api_key, cluster.admin_key)
    if cluster.ray_address and not (cluster.api_key or cluster.admin_key):
        if not router.allow_open_admin:
            raise ValueError(
                "Ray replicas on other machines listen on their node's address: set "
                "--admin-key (or --api-key), or pass --allow-open-admin"
            )
    return cluster, router


def main(argv: list[str] | None = None) -> int:
    """Entry point of `rlserve serve --replicas N ...`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cluster, router = configs_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=router.log_level, format="%(levelname)s %(name)s: %(message)s")
    from rlserve.cluster.replica_set import ReplicaSet

    replicas = ReplicaSet(cluster)
    try:
        replicas.start()
    except (TimeoutError, ValueError, OSError, ImportError) as exc:
        log.error("cannot start the replicas: %s", exc)
        return 2
    try:
        serve(replicas, router)
    finally:
        replicas.close()
    return 0


def serve(replicas: Any, config: RouterConfig) -> None:
    """Run the router under uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    from rlserve.cluster.router_app import create_router_app

    app = create_router_app(replicas, config)
    names = ", ".join(f"{r.name}={r.url}" for r in replicas.replicas)
    log.info("routing on http://%s:%d to %s", config.host, config.port, names)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level.lower(),
        timeout_keep_alive=65,  # longer than clients keep idle connections (see server.cli)
    )
