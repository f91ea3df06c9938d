"""`Replica`: one endpoint of a cluster as the router and the `Cluster` API see it."""

from __future__ import annotations

from dataclasses import dataclass

REPLICA_KINDS = ("ray", "remote")
DIALECTS = ("rlserve", "vllm", "sglang")


@dataclass
class Replica:
    """One replica: a Ray actor running rlserve's server, or an external URL.

    `url` is None while a Ray replica (re)starts. `outstanding` counts requests in flight
    through the router or the `Cluster` API (both bump it). Only `ReplicaSet` flips
    `healthy` back to True, after a health probe (and, for a restarted Ray replica, after
    the last committed weights and adapters are replayed on it).
    """

    name: str
    kind: str
    dialect: str
    url: str | None = None
    healthy: bool = False
    outstanding: int = 0
    last_error: str | None = None
    restarts: int = 0

    def __post_init__(self) -> None:
        if self.kind not in REPLICA_KINDS:
            raise ValueError(f"kind must be one of {list(REPLICA_KINDS)}, got {self.kind!r}")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {list(DIALECTS)}, got {self.dialect!r}")

    @property
    def routable(self) -> bool:
        """Healthy and reachable: the router may send it requests."""
        return self.healthy and self.url is not None

    def describe(self) -> dict[str, object]:
        """The row `/health` and `Cluster.health()` show for this replica."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dialect": self.dialect,
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }
