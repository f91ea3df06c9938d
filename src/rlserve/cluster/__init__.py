"""Many replicas behind one endpoint on Ray: `Cluster` (Python API), `ReplicaSet`, the router.

Ray is an optional extra (`pip install rlserve[ray]`); it is imported only when Ray
replicas are started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlserve.cluster.config import ClusterConfig
from rlserve.cluster.replica import Replica

if TYPE_CHECKING:
    from rlserve.cluster.cluster import Cluster
    from rlserve.cluster.replica_set import ReplicaSet

__all__ = ["Cluster", "ClusterConfig", "Replica", "ReplicaSet"]


def __getattr__(name: str) -> Any:
    if name == "Cluster":
        from rlserve.cluster.cluster import Cluster

        return Cluster
    if name == "ReplicaSet":
        from rlserve.cluster.replica_set import ReplicaSet

        return ReplicaSet
    raise AttributeError(f"module 'rlserve.cluster' has no attribute {name!r}")
